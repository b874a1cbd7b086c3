"""Publish a saved student/teacher folder to the Hugging Face hub (``huggingface_hub``).

:func:`prepare_publish` checks the folder and writes its card; :func:`push` uploads it.

1. **manifest check** — the folder holds an embed-kd manifest (``embed_kd_train.json`` or
   ``embed_kd_teacher.json``) and the model in it loads and has the fingerprint the manifest
   recorded (so the card describes these weights, not an earlier run's);
2. **card** — :func:`embed_kd.cards.write_model_card` refreshes ``README.md`` with the repo id in
   the usage snippets and any eval results given;
3. **plan** — the files to upload: everything in the folder except ``checkpoints/`` (kept
   locally unless ``include_checkpoints``) and hidden/temporary files;
4. **push** — ``HfApi.create_repo(exist_ok=True)`` then ``HfApi.upload_folder`` with the same
   ignore patterns. When the hub is unreachable (or ``HF_HUB_OFFLINE=1``) this is an error that
   says nothing was uploaded; ``--dry-run`` does steps 1–3 and prints the plan.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from embed_kd.cards import MANIFESTS, find_manifest, write_model_card
from embed_kd.errors import ArtifactError, EmbedKDError
from embed_kd.evaluation.report import CARD_SCHEMAS, read_results
from embed_kd.models import fingerprint_model, load_cross_encoder, load_sentence_transformer
from embed_kd.presets import hub_reachable

logger = logging.getLogger(__name__)
IGNORE = ["checkpoints/*", ".*", "**/.*"]


@dataclass
class PublishPlan:
    folder: Path
    repo_id: str
    manifest: Path
    kind: str  # "student" | "cross-encoder teacher"
    fingerprint: str
    card: Path
    files: list[tuple[str, int]] = field(default_factory=list)  # (relative path, bytes)
    ignore_patterns: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(n for _, n in self.files)


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise EmbedKDError(f"--repo-id {repo_id!r}: not a valid hub repo id ({exc})") from None
    if "/" not in repo_id:
        raise EmbedKDError(f"--repo-id {repo_id!r}: use OWNER/NAME (your user or organisation, then the model name)")


def _files(folder: Path, include_checkpoints: bool) -> list[tuple[str, int]]:
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if not include_checkpoints and rel.parts[0] == "checkpoints":
            continue
        out.append((rel.as_posix(), p.stat().st_size))
    return out


def verify_fingerprint(folder: Path, manifest_path: Path, manifest: dict) -> tuple[str, str]:
    """Load the model in ``folder`` and compare its fingerprint with the manifest's; ``(kind, fp)``.

    Loaded on the CPU: only its weights are hashed, nothing runs (so ``publish`` has no ``--device``)."""
    if manifest["schema"] == MANIFESTS["embed_kd_train.json"]:
        kind, expected = "student", (manifest.get("student") or {}).get("fingerprint")
        model = load_sentence_transformer(folder, device="cpu")
    else:
        kind, expected = "cross-encoder teacher", manifest.get("model_fingerprint")
        model = load_cross_encoder(folder, device="cpu")
    actual = fingerprint_model(model)
    if expected and actual != expected:
        raise ArtifactError(f"{manifest_path}: records model fingerprint {expected} but the weights in {folder} "
                            f"have {actual}; the folder was changed after training — re-run it or fix the folder")
    return kind, actual


def prepare_publish(folder: str | os.PathLike, repo_id: str, *, eval_results: Iterable[dict] = (),
                    eval_files: Iterable[str | os.PathLike] = (), include_checkpoints: bool = False) -> PublishPlan:
    """Steps 1–3: check the manifest and weights, write the card, list the files to upload.

    ``eval_files`` (``--eval``): result JSONs read and checked by
    :func:`embed_kd.evaluation.report.read_results` (``embed-kd/eval@1`` / ``embed-kd/mteb@1``, the
    fields the tables read) before the model loads, tabulated after ``eval_results``."""
    folder = Path(folder)
    _check_repo_id(repo_id)
    eval_results = [*eval_results, *read_results(eval_files, CARD_SCHEMAS)]
    manifest_path, manifest = find_manifest(folder)
    kind, fp = verify_fingerprint(folder, manifest_path, manifest)
    card = write_model_card(folder, manifest=manifest, name=repo_id, eval_results=eval_results)
    ignore = list(IGNORE) if not include_checkpoints else [p for p in IGNORE if not p.startswith("checkpoints")]
    return PublishPlan(folder=folder, repo_id=repo_id, manifest=manifest_path, kind=kind, fingerprint=fp, card=card,
                       files=_files(folder, include_checkpoints), ignore_patterns=ignore)


def push(plan: PublishPlan, *, private: bool = False, commit_message: str | None = None,
         token: str | None = None) -> str:
    """Step 4: create the repo (if needed) and upload; returns the commit URL."""
    if not hub_reachable():
        raise EmbedKDError("the Hugging Face hub is not reachable (offline, or HF_HUB_OFFLINE=1): nothing was "
                           "uploaded; the folder is prepared (card written) — pass --dry-run to see what would be "
                           "uploaded, and publish again when online")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(plan.repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(plan.folder), repo_id=plan.repo_id, repo_type="model",
                                 ignore_patterns=plan.ignore_patterns,
                                 commit_message=commit_message or f"embed-kd publish ({plan.kind} {plan.fingerprint})")
    except HfHubHTTPError as exc:
        raise EmbedKDError(f"hub upload to {plan.repo_id} failed: {str(exc).splitlines()[0]} "
                           f"(logged in? `hf auth login` or HF_TOKEN)") from None
    except OSError as exc:
        raise EmbedKDError(f"hub upload to {plan.repo_id} failed: {exc}") from None
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("published %s to %s", plan.folder, url)
    return url
