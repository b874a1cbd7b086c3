"""Build a dense student: from a path/preset, cut out of the embedding teacher, or narrow + projection.

Three ways, one result — a plain sentence-transformers model that ``SentenceTransformer(path)``
loads after ``model.save(path)``:

- **path / hub id / preset** (``StudentSpec(model="...")``): loaded through
  :func:`embed_kd.models.load_sentence_transformer`; a projection is added when ``projection_dim``
  is set.
- **layer cut** (``StudentSpec(from_teacher=True, keep_layers=[0, 2, 4])``): a deep copy of the
  teacher keeping only the listed transformer layers (the layer-reduction recipe of
  sentence-transformers' model-compression example). Embeddings, pooling and normalisation are the
  teacher's, so the student starts in the teacher's space (aligned).
- **static** (``StudentSpec(type="static", from_teacher=True)``): a ``StaticEmbedding`` table over
  the teacher's tokenizer, initialised from the teacher's embedding of each vocabulary entry
  (:mod:`embed_kd.students.static`, settings in ``TrainConfig.static``); with ``model`` a saved
  static student is loaded and trained further.
- **narrow config** (``StudentSpec(from_teacher=True, hidden_size=192, num_layers=3)``): a fresh,
  randomly initialised BERT with the teacher's tokenizer, ``hidden_size`` wide, followed by a
  learned linear projection (:class:`~sentence_transformers.sentence_transformer.modules.Dense`,
  identity activation) to the teacher's dimension, so asymmetric search against the teacher's
  document embeddings works. The projection is a module of the saved folder.

>>> StudentSpec(from_teacher=True, keep_layers=[0, 2, 4]).describe()
'teacher layers [0, 2, 4]'
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from embed_kd.errors import EmbedKDError
from embed_kd.models import forget_fingerprint, load_sentence_transformer
from embed_kd.students.static import build_static_student, is_static_model

logger = logging.getLogger(__name__)


@dataclass
class StudentSpec:
    """How to make the student (see the module docstring)."""

    model: str | None = None              # path / hub id / preset
    from_teacher: bool = False            # cut (keep_layers) or narrow (hidden_size) copy of the teacher
    keep_layers: list[int] | None = None  # teacher layer indices to keep, in order
    hidden_size: int | None = None        # narrow student width (random init) — needs num_layers
    num_layers: int | None = None
    projection_dim: int | None = None     # add a learned Linear to this dimension (before normalisation)
    max_seq_length: int | None = None     # override the student's max_seq_length
    extra: dict = field(default_factory=dict)
    type: str = "dense"                   # dense | sparse (SPLADE, embed_kd.students.sparse) | static
                                          # (StaticEmbedding, embed_kd.students.static)

    def describe(self) -> str:
        if self.type == "sparse":
            base = self.model or "the teacher"
            return f"sparse (SPLADE) from {base}" + (f", layers {list(self.keep_layers)}" if self.keep_layers else "")
        if self.type == "static":
            return f"static embeddings, {f'model {self.model}' if self.model else 'from the teacher'}"
        if self.model:
            return f"model {self.model}" + (f" + projection to {self.projection_dim}" if self.projection_dim else "")
        if self.keep_layers is not None:
            return f"teacher layers {list(self.keep_layers)}"
        return f"narrow {self.num_layers}x{self.hidden_size} + projection"

    def validate(self) -> None:
        if self.type not in ("dense", "sparse", "static"):
            raise EmbedKDError(f"student: type = {self.type!r}; expected dense, sparse or static")
        if self.model and self.from_teacher:
            raise EmbedKDError("student: pass either a model (--student) or --student-from-teacher, not both")
        if not self.model and not self.from_teacher:
            raise EmbedKDError("student: pass a model (--student PATH|PRESET) or --student-from-teacher")
        if self.type == "dense" and self.from_teacher and self.keep_layers is None and not (
                self.hidden_size and self.num_layers):
            raise EmbedKDError("student: --student-from-teacher needs --keep-layers (a layer cut) or "
                               "student.hidden_size + student.num_layers (a narrow student)")
        if self.keep_layers is not None and self.hidden_size:
            raise EmbedKDError("student: keep_layers (a cut) and hidden_size (a narrow student) exclude each other")
        if self.type == "static":
            for key in ("keep_layers", "hidden_size", "num_layers", "projection_dim"):
                if getattr(self, key) is not None:
                    raise EmbedKDError(f"student: {key} does not apply to a static student (its width is the "
                                       "teacher's, or static.pca_dims + a Dense back to it)")


def _transformer_module(model):
    first = model[0]
    auto = getattr(first, "auto_model", None) or getattr(first, "model", None)
    if auto is None or not hasattr(auto, "config"):
        raise EmbedKDError(f"student: the first module of the model is {type(first).__name__}, not a Transformer")
    return first, auto


def _encoder_layers(auto_model):
    for owner in (getattr(auto_model, "encoder", None), getattr(getattr(auto_model, "base_model", None), "encoder", None)):
        if owner is not None and hasattr(owner, "layer"):
            return owner
    raise EmbedKDError(f"student: cannot find the encoder layers of {type(auto_model).__name__} "
                       "(layer cuts support BERT-like encoders with encoder.layer)")


def cut_layers(teacher, keep_layers: list[int]):
    """A deep copy of ``teacher`` keeping only the transformer layers ``keep_layers`` (in that order)."""
    import torch

    student = copy.deepcopy(teacher)
    forget_fingerprint(student)  # the copy carries the teacher's cached fingerprint; its weights differ
    _, auto = _transformer_module(student)
    encoder = _encoder_layers(auto)
    n = len(encoder.layer)
    keep = [int(i) for i in keep_layers]
    if not keep:
        raise EmbedKDError("student: --keep-layers is empty; keep at least one layer")
    bad = [i for i in keep if not 0 <= i < n]
    if bad:
        raise EmbedKDError(f"student: --keep-layers {bad} out of range; the teacher has layers 0..{n - 1}")
    if len(set(keep)) != len(keep):
        raise EmbedKDError(f"student: --keep-layers {keep} repeats a layer")
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in keep])
    auto.config.num_hidden_layers = len(keep)
    for new_i, layer in enumerate(encoder.layer):  # keep cache/attention indices consistent
        attn = getattr(getattr(layer, "attention", None), "self", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_i
    logger.info("student: cut teacher to layers %s (%d of %d)", keep, len(keep), n)
    return student


def with_projection(model, out_dim: int):
    """Insert a learned linear projection (identity activation) to ``out_dim`` before normalisation."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    in_dim = model.get_embedding_dimension()
    modules = list(model)
    tail = []
    while modules and isinstance(modules[-1], Normalize):
        tail.insert(0, modules.pop())
    import torch

    dense = Dense(in_dim, int(out_dim), bias=True, activation_function=torch.nn.Identity())
    if in_dim == out_dim:  # start as the identity: the student stays in its current space
        with torch.no_grad():
            dense.linear.weight.copy_(torch.eye(in_dim))
            dense.linear.bias.zero_()
    new = SentenceTransformer(modules=[*modules, dense, *tail], device=str(model.device))
    new.max_seq_length = model.max_seq_length
    new.similarity_fn_name = model.similarity_fn_name
    return new


def narrow_student(teacher, hidden_size: int, num_layers: int, *, projection_dim: int | None = None, seed: int = 0):
    """A randomly initialised BERT (teacher's tokenizer), ``hidden_size`` wide, projected to the teacher's dim."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoConfig, AutoModel

    first, auto = _transformer_module(teacher)
    heads = max(1, hidden_size // 64)
    while hidden_size % heads:
        heads -= 1
    cfg = AutoConfig.for_model(
        auto.config.model_type, vocab_size=auto.config.vocab_size, hidden_size=hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=heads, intermediate_size=hidden_size * 4,
        max_position_embeddings=auto.config.max_position_embeddings,
    )
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        AutoModel.from_config(cfg).save_pretrained(tmp)
        first.tokenizer.save_pretrained(tmp)
        transformer = Transformer(tmp, max_seq_length=teacher.max_seq_length)
        target = projection_dim or teacher.get_embedding_dimension()
        pooling_mode = getattr(teacher[1], "pooling_mode", "mean") if len(teacher) > 1 else "mean"
        if not isinstance(pooling_mode, str):
            pooling_mode = "mean"
        modules = [transformer, Pooling(hidden_size, pooling_mode)]
        student = SentenceTransformer(modules=modules, device="cpu")
        if any(isinstance(m, Normalize) for m in teacher):
            student = SentenceTransformer(modules=[*modules, Normalize()], device="cpu")
        student = with_projection(student, target) if target != hidden_size or projection_dim else student
    student.similarity_fn_name = teacher.similarity_fn_name
    return student


def build_student(spec: StudentSpec, teacher=None, *, seed: int = 0, static=None, texts=None, cache=None):
    """Make the student described by ``spec`` (``teacher``: the loaded embedding teacher, for cuts).

    A static student from the teacher takes ``static`` (a :class:`embed_kd.students.static.StaticSpec`),
    ``texts`` (what its SIF weighting counts) and ``cache`` (an embedding cache for the teacher's
    token vectors).
    """
    spec.validate()
    if spec.type == "static" and not spec.model:
        if teacher is None:
            raise EmbedKDError("student: a static student is initialised from the embedding teacher (--teacher)")
        student = build_static_student(teacher, static, texts=texts, cache=cache, max_seq_length=spec.max_seq_length,
                                       seed=seed)
        student.embed_kd_spec = f"student ({spec.describe()})"
        return student
    if spec.model:
        student = load_sentence_transformer(spec.model)
        if spec.projection_dim and spec.projection_dim != student.get_embedding_dimension():
            student = with_projection(student, spec.projection_dim)
    else:
        if teacher is None:
            raise EmbedKDError("student: --student-from-teacher needs the embedding teacher (--teacher)")
        if spec.keep_layers is not None:
            student = cut_layers(teacher, spec.keep_layers)
            if spec.projection_dim and spec.projection_dim != student.get_embedding_dimension():
                student = with_projection(student, spec.projection_dim)
        else:
            student = narrow_student(teacher, spec.hidden_size, spec.num_layers, projection_dim=spec.projection_dim,
                                     seed=seed)
    if spec.type == "static":
        if not is_static_model(student):
            raise EmbedKDError(f"student: {spec.model} is not a static model (its first module is "
                               f"{type(student[0]).__name__}, not StaticEmbedding); drop student.type: static")
    elif spec.max_seq_length:
        student.max_seq_length = int(spec.max_seq_length)
    student.embed_kd_spec = f"student ({spec.describe()})"
    return student


def save_student(model, path: str | Path) -> Path:
    """Save as a plain sentence-transformers folder (``SentenceTransformer(path)`` loads it)."""
    model.save(str(path))
    return Path(path)
