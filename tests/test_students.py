"""Student building: layer cuts, projection, narrow configs — all saved/loaded as plain ST folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from embed_kd.errors import EmbedKDError
from embed_kd.students import StudentSpec, build_student, cut_layers, narrow_student, with_projection


@pytest.fixture(scope="module")
def teacher(tiny_model):
    return SentenceTransformer(str(tiny_model), device="cpu")


def test_cut_keeps_listed_layers_and_roundtrips(teacher, tmp_path):
    student = cut_layers(teacher, [1])
    enc = student[0].auto_model.encoder
    assert len(enc.layer) == 1 and student[0].auto_model.config.num_hidden_layers == 1
    t_layer1 = teacher[0].auto_model.encoder.layer[1].state_dict()
    for k, v in enc.layer[0].state_dict().items():
        assert torch.equal(v, t_layer1[k])
    assert len(teacher[0].auto_model.encoder.layer) == 2  # the teacher is untouched
    student.save(str(tmp_path / "cut"))
    loaded = SentenceTransformer(str(tmp_path / "cut"), device="cpu")
    texts = ["cat purr ?", "the sea wave"]
    np.testing.assert_allclose(loaded.encode(texts), student.encode(texts), atol=1e-5)
    assert loaded[0].auto_model.config.num_hidden_layers == 1
    assert not np.allclose(loaded.encode(texts), teacher.encode(texts), atol=1e-3)  # a real cut


def test_cut_of_a_fingerprinted_teacher_gets_its_own_fingerprint(teacher):
    from embed_kd.models import fingerprint_model, fingerprint_module

    t_fp = fingerprint_model(teacher)  # cached on the teacher object, as after a corpus encode
    student = cut_layers(teacher, [0])
    assert fingerprint_model(student) != t_fp
    assert fingerprint_model(student) == fingerprint_module(student, f"max_seq_length={student.max_seq_length}")


@pytest.mark.parametrize("keep,msg", [([2], "out of range"), ([], "empty"), ([0, 0], "repeats")])
def test_cut_refuses_bad_layers(teacher, keep, msg):
    with pytest.raises(EmbedKDError, match=msg):
        cut_layers(teacher, keep)


def test_projection_is_a_saved_module(teacher, tmp_path):
    student = with_projection(cut_layers(teacher, [0]), 48)
    assert student.get_embedding_dimension() == 48
    student.save(str(tmp_path / "proj"))
    modules = [m["type"] for m in json.loads((tmp_path / "proj" / "modules.json").read_text())]
    assert any(t.endswith("Dense") for t in modules) and modules[-1].endswith("Normalize")
    loaded = SentenceTransformer(str(tmp_path / "proj"), device="cpu")
    out = loaded.encode(["dog bark ?"])
    assert out.shape == (1, 48)
    assert np.linalg.norm(out[0]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(out, student.encode(["dog bark ?"]), atol=1e-5)


def test_same_dim_projection_starts_as_identity(teacher):
    base = cut_layers(teacher, [0])
    proj = with_projection(base, 32)
    np.testing.assert_allclose(proj.encode(["gene dna ?"]), base.encode(["gene dna ?"]), atol=1e-5)


def test_narrow_student_projects_to_teacher_dim(teacher, tmp_path):
    student = narrow_student(teacher, hidden_size=16, num_layers=1)
    assert student.get_embedding_dimension() == teacher.get_embedding_dimension() == 32
    assert student[0].auto_model.config.hidden_size == 16
    student.save(str(tmp_path / "narrow"))
    loaded = SentenceTransformer(str(tmp_path / "narrow"), device="cpu")
    assert loaded.encode(["rain cloud"]).shape == (1, 32)


def test_build_student_from_spec(teacher, tiny_model_b):
    cut = build_student(StudentSpec(from_teacher=True, keep_layers=[0], max_seq_length=16), teacher)
    assert cut.max_seq_length == 16 and len(cut[0].auto_model.encoder.layer) == 1
    loaded = build_student(StudentSpec(model=str(tiny_model_b), projection_dim=40))
    assert loaded.get_embedding_dimension() == 40
    with pytest.raises(EmbedKDError, match="not both"):
        build_student(StudentSpec(model="x", from_teacher=True, keep_layers=[0]), teacher)
    with pytest.raises(EmbedKDError, match="keep-layers"):
        build_student(StudentSpec(from_teacher=True), teacher)
