"""Teachers that score (query, document) candidate pairs: cross-encoder, bi-encoder, BM25.

A teacher spec (``--teacher``; ``NAME=`` is optional and names the ``score__NAME`` column)::

    bm25                      BM25 score of the pair (bm25s; the same index as bm25 candidates)
    ce:MODEL | cross-encoder:MODEL
                              a sentence-transformers CrossEncoder (path, hub id or preset):
                              raw logits by default (Margin-MSE needs unsquashed margins),
                              ``--activation sigmoid`` to squash
    bi:MODEL | bi-encoder:MODEL
                              a SentenceTransformer: similarity of query and document embeddings
                              (document embeddings from the shared embedding cache; run by
                              torch, OpenVINO or ONNX Runtime: ``--bi-backend``, recorded as
                              the teacher's ``backend``)
    MODEL                     kind guessed from the model folder / preset (cross-encoder when its
                              config is a *ForSequenceClassification)

Default names: ``bm25``, the preset name, or the model folder's / hub id's last part.

Cross-encoder scoring (:class:`CrossEncoderTeacher`) orders the pairs of a chunk longest first (so a
batch pads little) and, with the torch backends, scores them with sentence-transformers' own
``CrossEncoder.predict`` in slices of a few batches (exact mode: ``predict``'s scores; the slices let
the progress bar move); the OpenVINO and ONNX backends tokenise each pair once, sort by token length
and pad each batch from the ready token ids. The backend may be

- ``torch`` (exact: ``predict``'s own scores);
- ``torch-bf16`` (the same ``predict`` with the model's weights in bfloat16: fast mode on CPUs with
  native bf16 — AVX512-BF16 or AMX — scores drift slightly);
- ``torch-fp16`` (the same with the weights in float16: the fast mode on a GPU — ``--device cuda``;
  refused on the CPU; ``torch-bf16`` runs on GPUs with bfloat16 too);
- ``openvino`` (float32 OpenVINO: the torch scores within ~1e-5, faster than torch on CPU) or
  ``openvino-bf16`` (the recommended fast mode on CPUs with native bf16), see
  :mod:`embed_kd.teachers.openvino_backend`;
- ``onnx`` / ``onnx-int8`` (ONNX Runtime, optionally with int8 weights; ``onnx-int8`` drifts most),
  see :mod:`embed_kd.teachers.onnx_backend`.

eval/results/score-teacher-speed.md has the measured speed, drift and per-query Kendall tau of each.

>>> parse_teacher_spec("bm25")
TeacherSpec(kind='bm25', name='bm25', model=None)
>>> parse_teacher_spec("big=ce:/models/my-ce")
TeacherSpec(kind='cross-encoder', name='big', model='/models/my-ce')
>>> teacher_name_from_model("sentence-transformers/all-MiniLM-L6-v2")
'all-MiniLM-L6-v2'
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from embed_kd.candidates.shared import bi_backend_name
from embed_kd.cpu import native_bf16
from embed_kd.device import bf16_supported, is_gpu
from embed_kd.errors import EmbedKDError, ModelNotFoundError
from embed_kd.models import fingerprint_model, load_cross_encoder
from embed_kd.presets import resolve_model_spec
from embed_kd.teachers.onnx_backend import export_cross_encoder, OrtCrossEncoder

logger = logging.getLogger(__name__)

_KIND_PREFIX = {"ce": "cross-encoder", "cross-encoder": "cross-encoder", "bi": "bi-encoder",
                "bi-encoder": "bi-encoder"}
ACTIVATIONS = (None, "sigmoid")
BACKENDS = ("torch", "torch-bf16", "torch-fp16", "openvino", "openvino-bf16", "onnx", "onnx-int8")
#: backends that run the torch model on the selected device (the others are CPU runtimes)
TORCH_BACKENDS = ("torch", "torch-bf16", "torch-fp16")


@dataclass(frozen=True)
class TeacherSpec:
    kind: str
    name: str
    model: str | None = None


def teacher_name_from_model(model: str) -> str:
    """A column-safe name for a model spec: the last path / hub-id part."""
    base = Path(str(model).rstrip("/")).name or str(model)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.")
    return name or "teacher"


def parse_teacher_spec(text: str) -> TeacherSpec:
    """Parse a ``--teacher`` value (see the module docstring); the model is not loaded here."""
    raw = text.strip()
    if not raw:
        raise EmbedKDError("--teacher: empty spec")
    name = None
    head = raw.split(":", 1)[0]
    if "=" in head and not head.startswith(("/", ".")):
        name, raw = (p.strip() for p in raw.split("=", 1))
    if raw.lower() == "bm25":
        return TeacherSpec("bm25", name or "bm25")
    prefix, sep, rest = raw.partition(":")
    if sep and prefix.lower() in _KIND_PREFIX:
        kind, model = _KIND_PREFIX[prefix.lower()], rest
    else:
        kind, model = None, raw
    if not model:
        raise EmbedKDError(f"--teacher {text!r}: missing model")
    if kind is None:
        try:
            ms = resolve_model_spec(model)
        except ModelNotFoundError as exc:
            raise EmbedKDError(f"--teacher {text!r}: unknown teacher ({exc})") from None
        kind = ms.kind
        if kind not in ("cross-encoder", "bi-encoder"):
            raise EmbedKDError(f"--teacher {text!r}: cannot tell whether '{model}' is a cross-encoder or a "
                               "bi-encoder; write ce:MODEL or bi:MODEL")
    return TeacherSpec(kind, name or teacher_name_from_model(model), model)


class Teacher:
    """Scores candidate pairs of a chunk of queries; ``manifest_entry`` describes it for the store."""

    spec: TeacherSpec

    @property
    def name(self) -> str:
        return self.spec.name

    def manifest_entry(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, queries: Sequence[str], docs: Sequence[Sequence[str]],
              progress: Callable[[int], None] | None = None) -> list[np.ndarray]:  # pragma: no cover
        """``docs[i]`` are the candidate doc ids of query ``queries[i]``; one float32 array per query."""
        raise NotImplementedError


class BM25Teacher(Teacher):
    def __init__(self, spec: TeacherSpec, resources):
        self.spec = spec
        self.res = resources
        self.bm25 = resources.bm25()

    def manifest_entry(self) -> dict:
        return {"name": self.name, "spec": "bm25", "kind": "bm25", "fingerprint": self.bm25.config.fingerprint(),
                "activation": None, "max_length": None, "backend": "bm25s"}

    def score(self, queries, docs, progress=None):
        ds = self.res.dataset
        scored = self.bm25.score_pairs({q: ds.queries[q] for q in queries}, {q: list(d) for q, d in zip(queries, docs)})
        out = [np.array([scored[q][d] for d in dl], dtype=np.float32) for q, dl in zip(queries, docs)]
        if progress:
            progress(sum(len(d) for d in docs))
        return out


class BiEncoderTeacher(Teacher):
    def __init__(self, spec: TeacherSpec, resources):
        self.spec = spec
        self.res = resources
        self.model = resources.bi_encoder(spec.model)
        self.fingerprint = fingerprint_model(self.model)
        self.res.doc_embeddings(self.model)

    def manifest_entry(self) -> dict:
        return {"name": self.name, "spec": self.spec.model, "kind": "bi-encoder", "fingerprint": self.fingerprint,
                "activation": None, "max_length": getattr(self.model, "max_seq_length", None),
                "backend": bi_backend_name(self.model), "similarity": str(getattr(self.model, "similarity_fn_name", None) or "cosine")}

    def score(self, queries, docs, progress=None):
        import torch

        emb, _, row = self.res.doc_embeddings(self.model)
        q_emb = self.res.query_embeddings(self.model, list(queries))
        out = []
        for i, dl in enumerate(docs):
            d_emb = emb[[row[d] for d in dl]]
            sims = self.model.similarity(torch.from_numpy(q_emb[i : i + 1]), torch.from_numpy(d_emb))[0]
            out.append(sims.detach().cpu().numpy().astype(np.float32))
            if progress:
                progress(len(dl))
        return out


class CrossEncoderTeacher(Teacher):
    """A sentence-transformers ``CrossEncoder``, scored in length-ordered batches (``predict`` for torch backends).

    ``backend``: ``torch`` (exact: ``CrossEncoder.predict``'s computation), ``torch-bf16`` (fast: the
    same with the weights in bfloat16), ``openvino`` / ``openvino-bf16`` (OpenVINO in float32 / bf16,
    see :mod:`embed_kd.teachers.openvino_backend`) or ``onnx`` / ``onnx-int8`` (ONNX Runtime, see
    :mod:`embed_kd.teachers.onnx_backend`).
    """

    def __init__(self, spec: TeacherSpec, resources, *, activation: str | None = None, max_length: int | None = None,
                 batch_size: int = 32, backend: str = "torch"):
        if activation not in ACTIVATIONS:
            raise EmbedKDError(f"--activation must be one of none, sigmoid; got {activation!r}")
        if backend not in BACKENDS:
            raise EmbedKDError(f"--backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.spec = spec
        self.res = resources
        self.activation = activation
        self.batch_size = batch_size
        self.backend = backend
        # the torch backends run on the selected device; OpenVINO / ONNX Runtime convert a CPU copy
        self.model = load_cross_encoder(spec.model, max_length=max_length, role=f"--teacher ce:{spec.model}",
                                        device=None if backend in TORCH_BACKENDS else "cpu")
        if self.model.num_labels != 1:
            raise EmbedKDError(f"--teacher {spec.model}: a teacher cross-encoder must output one score "
                               f"(num_labels=1), this one has {self.model.num_labels}")
        self.max_length = int(self.model.max_seq_length)
        self.fingerprint = fingerprint_model(self.model)
        self._runtime = None
        if backend in ("torch-bf16", "torch-fp16"):
            import torch

            _check_half_precision(backend, str(self.model.device))
            # after fingerprinting: the store names the fp32 model it scored
            self.model.to(torch.bfloat16 if backend == "torch-bf16" else torch.float16)
        elif backend != "torch":  # a converted graph, cached by fingerprint, run by OpenVINO or ONNX Runtime
            import torch

            cache = getattr(resources, "cache", None)
            root, threads = (cache.root if cache is not None else None), torch.get_num_threads()
            if backend.startswith("openvino"):
                from embed_kd.teachers import openvino_backend as ovb

                path = ovb.export_cross_encoder(self.model, root)
                self._runtime = ovb.OvCrossEncoder(path, precision=ovb.VARIANTS[backend], threads=threads)
            else:
                self._runtime = OrtCrossEncoder(export_cross_encoder(self.model, backend, root), threads=threads)

    def manifest_entry(self) -> dict:
        entry = {"name": self.name, "spec": self.spec.model, "kind": "cross-encoder", "fingerprint": self.fingerprint,
                 "activation": self.activation, "max_length": self.max_length, "backend": self.backend}
        if self.backend.startswith("openvino"):  # what ran: openvino-bf16 runs f32 on CPUs without native bf16
            entry["precision"] = self._runtime.precision
        return entry

    #: pairs per ``CrossEncoder.predict`` call (in batches): progress is reported after each slice
    SLICE_BATCHES = 8

    def score_texts(self, pairs: Sequence[tuple[str, str]], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Scores of ``(query text, doc text)`` pairs in input order (float32)."""
        n = len(pairs)
        out = np.empty(n, dtype=np.float32)
        if n == 0:
            return out
        if self._runtime is None:
            return self._score_torch(pairs, out, progress)
        tok = self.model.tokenizer
        enc = tok([p[0] for p in pairs], [p[1] for p in pairs], truncation=True, max_length=self.max_length)
        keys = list(enc.keys())
        lengths = np.array([len(ids) for ids in enc["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = {k: [enc[k][i] for i in idx] for k in keys}
            logits = self._runtime.logits(tok.pad(batch, return_tensors="np"))
            out[idx] = 1.0 / (1.0 + np.exp(-logits)) if self.activation == "sigmoid" else logits
            if progress:
                progress(len(idx))
        return out

    def _score_torch(self, pairs, out: np.ndarray, progress) -> np.ndarray:
        """torch backends: sentence-transformers' own ``CrossEncoder.predict`` over slices of the pairs.

        The pairs are ordered longest first (by characters, as ``predict`` orders a call's inputs) and cut
        into slices of ``SLICE_BATCHES × batch_size``; each slice is one ``predict`` call (it tokenises
        each batch once, pads to the batch's longest pair and runs the model), so the scores are
        ``predict``'s own, batches pad little, and the progress bar moves after every slice.
        ``torch-bf16`` runs the same calls with the model's weights in bfloat16 (``predict`` returns
        float32 scores).
        """
        import torch

        act = torch.nn.Sigmoid() if self.activation == "sigmoid" else torch.nn.Identity()
        order = np.argsort([-(len(q) + len(d)) for q, d in pairs], kind="stable")
        step = self.batch_size * self.SLICE_BATCHES
        for start in range(0, len(pairs), step):
            idx = order[start : start + step]
            scores = self.model.predict([pairs[i] for i in idx], batch_size=self.batch_size, activation_fn=act,
                                        convert_to_numpy=True, show_progress_bar=False)
            out[idx] = np.asarray(scores, dtype=np.float32).reshape(len(idx), -1)[:, 0]
            if progress:
                progress(len(idx))
        return out

    def score(self, queries, docs, progress=None):
        ds = self.res.dataset
        pairs, bounds = [], []
        for q, dl in zip(queries, docs):
            start = len(pairs)
            pairs += [(ds.queries[q], ds.doc_text(d)) for d in dl]
            bounds.append((start, len(pairs)))
        flat = self.score_texts(pairs, progress)
        return [flat[a:b] for a, b in bounds]


def _check_half_precision(backend: str, device: str) -> None:
    """``torch-fp16`` needs a GPU; ``torch-bf16`` is only fast with native bfloat16 (a CPU with
    AVX512-BF16 / AMX, a GPU that supports it): a warning otherwise."""
    if backend == "torch-fp16":
        if not is_gpu(device):
            raise EmbedKDError(f"--backend torch-fp16 runs the teacher in float16 on a GPU; this run's device is "
                               f"{device} (pass --device cuda, or use torch-bf16 / openvino-bf16 on the CPU)")
        return
    if device.startswith("cuda"):
        if not bf16_supported(device):
            logger.warning("--backend torch-bf16: %s has no native bfloat16; torch-fp16 is the fast mode here", device)
        return
    if device == "cpu":
        if not native_bf16("torch"):
            logger.warning("--backend torch-bf16: this CPU has no native bfloat16 (AVX512-BF16/AMX); bf16 is "
                           "emulated and likely slower than --backend torch")


def build_teacher(spec: TeacherSpec, resources, **ce_options) -> Teacher:
    """Load the teacher a spec names (raises EmbedKDError with the spec when it cannot)."""
    if spec.kind == "bm25":
        return BM25Teacher(spec, resources)
    try:
        if spec.kind == "bi-encoder":
            return BiEncoderTeacher(spec, resources)
        return CrossEncoderTeacher(spec, resources, **ce_options)
    except ModelNotFoundError as exc:
        raise EmbedKDError(f"--teacher {spec.name}: unknown teacher ({exc})") from None
