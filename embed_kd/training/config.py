"""Experiment configuration: one YAML file per experiment, dataclasses, ``--set key=value`` overrides.

A config file (``yaml.safe_load``; unknown keys are refused, naming the key) mirrors
:class:`TrainConfig`::

    data: scifact                    # BEIR folder or dataset name (train split queries only)
    split: train
    queries: null                    # or a queries file without judgments (embed_kd.training.inputs)
    corpus: null                     # or a corpus file (JSONL / TSV / plain text / hf:)
    scores: path/to/score-store      # `embed-kd score-teacher` output on the same split
    teacher: minilm-l6               # embedding teacher (alignment targets, frozen documents)
    output: runs/scifact-l3
    device: auto                     # auto | cpu | cuda | cuda:N | mps (embed_kd.device; --device wins)
    student: {from_teacher: true, keep_layers: [0, 2, 4]}   # see embed_kd.students.StudentSpec
    examples:  {negatives: 7, sampling: stratified, rounds: 4, dev_queries: 50, score_norm: zscore,
                align_texts: [corpus, queries], max_align_texts: null, min_candidates: 4}
                # align_texts, weighted: [{source: corpus, weight: 0.5}, {source: stsb-train, weight: 0.3}]
    losses:    {score: margin_mse, score_documents: teacher, score_weight: 1.0, score_scale: 0.1,
                kl_temperature: 0.05, align: cosine, align_weight: 1.0}
    train:     {epochs: 1, max_steps: -1, batch_size: 32, lr: 2.0e-4, warmup_ratio: 0.1,
                weight_decay: 0.01, seed: 42, save_steps: 20, eval_steps: 20, max_time_s: null,
                threads: null, logging_steps: 10, precision: auto}   # auto | fp32 | bf16 | fp16
    average:   {enabled: true, last: 3}
    sparse:    {query_flops_weight: 3.0e-3, doc_flops_weight: 1.0e-3, ...}   # student.type: sparse only
                                     # (SparseConfig; docs/sparse.md)
    static:    {init: teacher, token_pooling: mean, pca_dims: null, weighting: sif, ...}  # student.type: static
                                     # only (embed_kd.students.static.StaticSpec; docs/static.md)
    phases:                          # then train on from this run's output (dense; embed_kd.training.phases)
      - name: general                # each phase = the config above + its own `set` (not PHASE_FIXED keys)
        set: {losses.score: none, examples.align_texts: [stsb-train], train.max_steps: 1200}

Student-type defaults: with ``student.type: static`` in the file (or ``--student-type static``),
the ``train:`` keys the file does not set take the static defaults
(:data:`embed_kd.students.static.TRAIN_DEFAULTS`: lr 0.05, batch_size 64, weight_decay 0, ...)
instead of the dense ones; keys the file sets are kept.

Overrides: ``--set train.lr=1e-4 --set student.keep_layers=[1,3,5] --set losses.score=none``; the
value is parsed with ``yaml.safe_load`` (so numbers, booleans, lists and ``null`` work).

>>> cfg = TrainConfig.from_dict({"data": "d", "scores": "s", "teacher": "t", "output": "o",
...                              "student": {"from_teacher": True, "keep_layers": [0, 2]}})
>>> cfg = apply_overrides(cfg, ["train.lr=1e-4", "losses.score=none"])
>>> cfg.train.lr
0.0001
>>> cfg.losses.score
'none'
>>> st = TrainConfig.from_dict({"student": {"type": "static", "from_teacher": True}, "train": {"lr": 0.1}})
>>> st.train.lr, st.train.batch_size    # the file's lr, the static default batch size
(0.1, 64)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from embed_kd.device import PRECISIONS, resolve_device, training_precision
from embed_kd.errors import EmbedKDError, describe_parse_error
from embed_kd.students.build import StudentSpec
from embed_kd.students.static import StaticSpec, TRAIN_DEFAULTS
from embed_kd.training.align_mix import FILE_PREFIX, parse_align_texts, source_names

SCORE_LOSSES = ("margin_mse", "kl", "none")
ALIGN_LOSSES = ("cosine", "mse", "l2", "none")
SAMPLINGS = ("stratified", "hardest", "uniform")


@dataclass
class ExamplesConfig:
    negatives: int = 7                  # negatives per (query, positive) example
    sampling: str = "stratified"        # how negatives are drawn from the teacher-ranked candidates
    rounds: int = 4                     # examples per train query (each with a fresh negative sample)
    dev_queries: int = 50               # train queries held out for the dev-slice evaluation
    score_norm: str = "zscore"          # per-query normalisation of the teacher's scores (whole list)
    align_texts: list = field(default_factory=lambda: ["corpus", "queries"])  # sources, optionally weighted:
    #                                  [{source: corpus, weight: 0.5}, {source: stsb-train, weight: 0.3}, ...]
    #                                  (embed_kd.training.align_mix)
    max_align_texts: int | None = None  # cap the alignment texts (random subset, seeded)
    min_candidates: int = 4             # queries with fewer scored candidates are skipped


@dataclass
class LossesConfig:
    score: str = "margin_mse"           # margin_mse | kl | none
    score_documents: str = "teacher"    # teacher: frozen teacher doc embeddings; student: the student encodes docs
    score_weight: float = 1.0
    score_scale: float = 0.1            # teacher scores (after score_norm) are multiplied by this
    kl_temperature: float = 0.05        # student temperature of DistillKLDivLoss (cosine scores are in [-1, 1])
    align: str = "cosine"               # cosine | mse | l2 | none  (EmbedDistillLoss distance; mse = ST's MSELoss)
    align_weight: float = 1.0


@dataclass
class TrainingConfig:
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32
    lr: float = 2e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 42
    save_steps: int = 20
    eval_steps: int = 20
    logging_steps: int = 10
    max_time_s: float | None = None     # stop (and save) after this many seconds of training
    threads: int | None = None
    sampler: str = "proportional"       # multi-dataset batch sampler: proportional | round_robin
    precision: str = "auto"             # auto (bf16 / fp16 on a GPU, fp32 on CPU) | fp32 | bf16 | fp16


@dataclass
class AverageConfig:
    enabled: bool = True
    last: int = 3                       # average the weights of the last N checkpoints (incl. the final one)


@dataclass
class SparseConfig:
    """SPLADE student settings (``student.type: sparse``; see embed_kd.students.sparse, docs/sparse.md)."""

    pooling: str = "max"                    # SpladePooling: max | sum
    activation: str = "relu"                # relu | log1p_relu
    head_bias: float = -5.0                 # initial output bias of an MLM head built on a dense encoder
    query_length: int = 32                  # max query tokens (Transformer.query_length)
    document_length: int = 256              # max document tokens at inference (Transformer.document_length)
    train_document_length: int | None = None  # max document tokens while training (null: document_length)
    query_flops_weight: float = 3.0e-3      # SpladeLoss query_regularizer_weight (FLOPS on query vectors)
    doc_flops_weight: float = 1.0e-3        # SpladeLoss document_regularizer_weight
    query_flops_threshold: int | None = None  # FlopsLoss threshold: only vectors with more non-zeros count
    doc_flops_threshold: int | None = None
    flops_warmup_ratio: float = 0.33        # regulariser weights grow from 0 over this share of the steps
    flops_schedule: str = "quadratic"       # quadratic | linear
    dev_pool: int = 20                      # dev slice: re-rank each dev query's top-N teacher candidates
    # term-bias stage (embed_kd.training.term_bias_stage): fit the head's per-term bias on max-logits
    term_bias_steps: int = 0                # 0: off; runs after SpladeLoss training (train.max_steps: 0 skips that)
    term_bias_loss: str = "kl"              # kl (listwise over all candidates) | margin_mse
    term_bias_lr: float = 0.05
    term_bias_temperature: float = 3.0      # teacher z-scores x temperature = target logits / margins
    term_bias_flops_weight: float = 1.0e-3  # FLOPS weight on query and document vectors
    term_bias_l2: float = 1.0e-3            # pull towards the starting bias
    term_bias_idf: float = 0.0              # > 0: start from an IDF-shaped bias (students.term_bias.idf_bias)
    term_bias_eval_every: int = 50          # dev retrieval every N steps; the best step is kept


@dataclass
class TrainConfig:
    data: str = ""
    split: str = "train"
    corpus: str | None = None           # a corpus file (JSONL/TSV/text, .gz, hf:) instead of / replacing data's
    queries: str | None = None          # a queries file without judgments (dev slice: loyalty to the teacher)
    scores: str | None = None
    teacher: str = "minilm-l6"
    output: str = ""
    device: str | None = None           # auto | cpu | cuda | cuda:N | mps; null: $EMBED_KD_DEVICE, else auto
    student: StudentSpec = field(default_factory=StudentSpec)
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    losses: LossesConfig = field(default_factory=LossesConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    average: AverageConfig = field(default_factory=AverageConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    static: StaticSpec = field(default_factory=StaticSpec)
    name: str | None = None
    phases: list = field(default_factory=list)  # later runs from this one's output (phase_configs)
    # where ``device`` was set, for its error messages (not a config key): ``--device``, ``--set device``,
    # ``FILE: device`` (set by config_from_cli); unset, $EMBED_KD_DEVICE names itself (embed_kd.device)
    device_from: typing.ClassVar[str] = "config: device"

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "TrainConfig":
        return _build(cls, raw, source)

    @classmethod
    def from_yaml(cls, path: str | Path, *, student_type: str | None = None) -> "TrainConfig":
        """Read a config file; ``student_type`` (``--student-type``) replaces its ``student.type``
        before the student-type defaults are applied."""
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EmbedKDError(f"{p}: config file not found") from None
        except UnicodeDecodeError as exc:
            raise EmbedKDError(f"{p}: {describe_parse_error(exc)}") from None
        except yaml.YAMLError as exc:
            raise EmbedKDError(f"{p}: not valid YAML ({describe_parse_error(exc)})") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise EmbedKDError(f"{p}: a config is a YAML mapping, got {type(raw).__name__}")
        if student_type:
            raw = with_student_type(raw, student_type)
        return _build(cls, raw, str(p))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        for key, val, allowed in (("losses.score", self.losses.score, SCORE_LOSSES),
                                  ("losses.align", self.losses.align, ALIGN_LOSSES),
                                  ("losses.score_documents", self.losses.score_documents, ("teacher", "student")),
                                  ("examples.sampling", self.examples.sampling, SAMPLINGS),
                                  ("examples.score_norm", self.examples.score_norm, ("zscore", "minmax", "none")),
                                  ("train.sampler", self.train.sampler, ("proportional", "round_robin")),
                                  ("train.precision", self.train.precision, PRECISIONS)):
            if val not in allowed:
                raise EmbedKDError(f"config: {key} = {val!r}; expected one of {', '.join(allowed)}")

        parse_align_texts(self.examples.align_texts)  # known sources, weights all or none
        if self.losses.score == "none" and self.losses.align == "none":
            raise EmbedKDError("config: losses.score and losses.align are both 'none'; nothing to train")
        if self.losses.score != "none" and not self.scores:
            raise EmbedKDError("config: losses.score needs a score store (scores: PATH / --scores)")
        if not (self.data or self.corpus or self.scores) and not self.alignment_on_files_only():
            raise EmbedKDError("config: data is required (--data, or --corpus FILE [--queries FILE]; or, to align "
                               "on raw texts only, losses.score: none and every examples.align_texts source a "
                               "file:PATH)")
        if self.student.type == "static" and not (self.data or self.corpus or self.scores):
            raise EmbedKDError("config: a static student weighs its vocabulary on the training corpus and queries; "
                               "give it data (--data, or --corpus FILE)")
        if not self.output:
            raise EmbedKDError("config: output is required (--output)")
        if self.examples.negatives < 1:
            raise EmbedKDError("config: examples.negatives must be >= 1")
        if self.losses.score == "kl" and self.examples.negatives < 1:
            raise EmbedKDError("config: the listwise KL loss needs >= 1 negative")
        for key in ("score_weight", "align_weight"):
            if getattr(self.losses, key) < 0:
                raise EmbedKDError(f"config: losses.{key} must be >= 0")
        if self.train.lr <= 0 or self.train.batch_size < 1:
            raise EmbedKDError("config: train.lr must be > 0 and train.batch_size >= 1")
        self._validate_ranges()

        device = resolve_device(self.device, what=self.device_from)  # now, not after loading; names the setting
        training_precision(self.train.precision, device)
        self.student.validate()
        if self.student.type == "sparse":
            self._validate_sparse()
        if self.student.type == "static":
            self.static.validate()
        if self.phases:
            if self.student.type != "dense":
                raise EmbedKDError(f"config: phases chain dense students; this student is {self.student.type!r}")
            for _, phase in phase_configs(self)[1:]:
                phase.validate()
        return self

    def alignment_on_files_only(self) -> bool:
        """LEAF's recipe without a dataset: no score loss, and every alignment source a ``file:PATH`` of raw
        texts — no judgments, scores or corpus are read, and there is no dev slice to evaluate
        (:func:`embed_kd.training.inputs.load_training_dataset` gives an empty dataset).

        >>> TrainConfig.from_dict({"losses": {"score": "none"},
        ...                        "examples": {"align_texts": ["file:general.txt"]}}).alignment_on_files_only()
        True
        >>> TrainConfig.from_dict({"losses": {"score": "none"}}).alignment_on_files_only()  # default: corpus, queries
        False
        """
        names = source_names(self.examples.align_texts)
        return (self.losses.score == "none" and self.losses.align != "none" and bool(names)
                and all(n.startswith(FILE_PREFIX) for n in names))

    def _validate_ranges(self) -> None:
        """Numbers in their meaningful ranges (types and finiteness are checked when the config is built)."""
        T, E, L = self.train, self.examples, self.losses
        for key, val, ok, want in (
                ("train.epochs", T.epochs, T.epochs > 0, "> 0"),
                ("train.max_steps", T.max_steps, T.max_steps >= -1, ">= -1 (-1: run train.epochs)"),
                ("train.warmup_ratio", T.warmup_ratio, 0 <= T.warmup_ratio <= 1, "in [0, 1]"),
                ("train.weight_decay", T.weight_decay, T.weight_decay >= 0, ">= 0"),
                ("train.seed", T.seed, T.seed >= 0, ">= 0"),
                ("train.save_steps", T.save_steps, T.save_steps >= 1, ">= 1"),
                ("train.eval_steps", T.eval_steps, T.eval_steps >= 1, ">= 1"),
                ("train.logging_steps", T.logging_steps, T.logging_steps >= 1, ">= 1"),
                ("train.max_time_s", T.max_time_s, T.max_time_s is None or T.max_time_s > 0, "> 0 (or null)"),
                ("train.threads", T.threads, T.threads is None or T.threads >= 1, ">= 1 (or null)"),
                ("examples.rounds", E.rounds, E.rounds >= 1, ">= 1"),
                ("examples.dev_queries", E.dev_queries, E.dev_queries >= 0, ">= 0"),
                ("examples.min_candidates", E.min_candidates, E.min_candidates >= 1, ">= 1"),
                ("examples.max_align_texts", E.max_align_texts, E.max_align_texts is None or E.max_align_texts >= 1,
                 ">= 1 (or null)"),
                ("losses.score_scale", L.score_scale, L.score_scale > 0, "> 0"),
                ("losses.kl_temperature", L.kl_temperature, L.kl_temperature > 0, "> 0"),
                ("average.last", self.average.last, self.average.last >= 1, ">= 1")):
            if not ok:
                raise EmbedKDError(f"config: {key} = {val!r}; it must be {want}")

    def _validate_sparse(self) -> None:
        S = self.sparse
        if self.losses.align != "none":
            raise EmbedKDError(f"config: losses.align = {self.losses.align!r} does not apply to a sparse student "
                               "(its vectors live in the vocabulary, not the teacher's space); set losses.align: none")
        if self.losses.score == "none":
            raise EmbedKDError("config: a sparse student learns from teacher scores; losses.score must be "
                               "margin_mse or kl")
        if self.losses.score_weight != 1.0:
            raise EmbedKDError("config: losses.score_weight does not apply to a sparse student (SpladeLoss weighs "
                               "the FLOPS regularisers against the score loss: tune sparse.*_flops_weight)")
        if self.losses.score_documents != "student":
            raise EmbedKDError("config: a sparse student encodes its own documents; set losses.score_documents: student")
        for key, val, allowed in (("sparse.pooling", S.pooling, ("max", "sum")),
                                  ("sparse.activation", S.activation, ("relu", "log1p_relu")),
                                  ("sparse.flops_schedule", S.flops_schedule, ("quadratic", "linear"))):
            if val not in allowed:
                raise EmbedKDError(f"config: {key} = {val!r}; expected one of {', '.join(allowed)}")
        for key in ("query_flops_weight", "doc_flops_weight"):
            if getattr(S, key) < 0:
                raise EmbedKDError(f"config: sparse.{key} must be >= 0")
        if not 0 < S.flops_warmup_ratio <= 1:
            raise EmbedKDError("config: sparse.flops_warmup_ratio must be in (0, 1]")
        if S.term_bias_loss not in ("kl", "margin_mse"):
            raise EmbedKDError(f"config: sparse.term_bias_loss = {S.term_bias_loss!r}; expected one of kl, margin_mse")
        for key in ("term_bias_lr", "term_bias_temperature"):
            if not getattr(S, key) > 0:
                raise EmbedKDError(f"config: sparse.{key} must be > 0")
        for key in ("term_bias_flops_weight", "term_bias_l2", "term_bias_idf"):
            if getattr(S, key) < 0:
                raise EmbedKDError(f"config: sparse.{key} must be >= 0")
        if isinstance(S.term_bias_steps, bool) or not isinstance(S.term_bias_steps, int) or S.term_bias_steps < 0:
            raise EmbedKDError(f"config: sparse.term_bias_steps must be an integer >= 0, got {S.term_bias_steps!r}")
        if self.train.max_steps == 0 and S.term_bias_steps == 0:
            raise EmbedKDError("config: train.max_steps = 0 skips SpladeLoss training; set sparse.term_bias_steps > 0 "
                               "or there is nothing to train")
        for key in ("query_length", "document_length", "train_document_length", "dev_pool", "term_bias_eval_every"):
            v = getattr(S, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise EmbedKDError(f"config: sparse.{key} must be a positive integer, got {v!r}")


def with_student_type(raw: dict, student_type: str) -> dict:
    """A copy of the raw config mapping with ``student.type`` set (so its type defaults apply)."""
    raw = dict(raw)
    student = raw.get("student")
    raw["student"] = {**(student if isinstance(student, dict) else {}), "type": student_type}
    return raw


def _type_defaults(raw: dict) -> dict:
    """Fill the ``train:`` keys a static student's config leaves out with the static defaults."""
    student = raw.get("student")
    if not (isinstance(student, dict) and student.get("type") == "static"):
        return raw

    train = raw.get("train")
    if train is not None and not isinstance(train, dict):
        return raw  # _build names the problem
    return {**raw, "train": {**TRAIN_DEFAULTS, **(train or {})}}


def _build(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise EmbedKDError(f"{where}: expected a mapping, got {type(raw).__name__}")
    if cls is TrainConfig:
        raw = _type_defaults(raw)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise EmbedKDError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, value in raw.items():
        ftype = _nested_type(fields[name])
        kwargs[name] = _build(ftype, value if value is not None else {}, f"{where}: {name}") if ftype else value
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - unknown keys are caught above
        raise EmbedKDError(f"{where}: {exc}") from None
    _check_types(obj, where)
    return obj


_NESTED = {"student": StudentSpec, "examples": ExamplesConfig, "losses": LossesConfig, "train": TrainingConfig,
           "average": AverageConfig, "sparse": SparseConfig, "static": StaticSpec}


def _nested_type(f):
    return _NESTED.get(f.name) if f.name in _NESTED else None


def _field_type(hints: dict, name: str):
    """``(base type, nullable)`` of a dataclass field from its annotation (``int | None`` → ``(int, True)``);
    ``(None, True)`` when it is not one plain type."""
    t = hints.get(name)
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return ((typing.get_origin(rest[0]) or rest[0]) if len(rest) == 1 else None), type(None) in args
    return (typing.get_origin(t) or t), False


def _list_of(t):
    """The element type of ``list[X]`` / ``list[X] | None``, else None."""
    for cand in (t, *typing.get_args(t)):
        if typing.get_origin(cand) is list and typing.get_args(cand):
            return typing.get_args(cand)[0]
    return None


def _check_types(obj, where: str) -> None:
    """Each value has its field's type — checked *before* any work folder exists: an integer field
    refuses ``1.5`` and ``nan``, a float field refuses NaN and ±inf (:mod:`embed_kd.numeric`)."""
    try:
        hints = typing.get_type_hints(type(obj))
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: check by default value only
        hints = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        base, nullable = _field_type(hints, f.name)
        if base is None or base is typing.Any:
            base = type(default) if default is not None else None
        if v is None:
            if nullable or default is None or base is None:
                continue
            raise EmbedKDError(f"{where}: {f.name} must be set (got null)")
        if base is bool:
            if not isinstance(v, bool):
                raise EmbedKDError(f"{where}: {f.name} must be true/false, got {v!r}")
        elif base is int:
            if isinstance(v, bool) or not isinstance(v, int):
                hint = " (an integer)" if isinstance(v, float) else ""
                raise EmbedKDError(f"{where}: {f.name} must be a whole number{hint}, got {v!r}")
        elif base is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise EmbedKDError(f"{where}: {f.name} must be a number, got {v!r}")
            if not math.isfinite(v):
                raise EmbedKDError(f"{where}: {f.name} must be a finite number, got {v!r}")
            setattr(obj, f.name, float(v))
        elif base is str:
            if not isinstance(v, str):
                raise EmbedKDError(f"{where}: {f.name} must be a string, got {v!r}")
        elif base is list:
            if not isinstance(v, list):
                raise EmbedKDError(f"{where}: {f.name} must be a list, got {v!r}")
            if any(isinstance(x, float) and not math.isfinite(x) for x in v):
                raise EmbedKDError(f"{where}: {f.name} must hold finite numbers, got {v!r}")
            if _list_of(hints.get(f.name)) is int and any(isinstance(x, bool) or not isinstance(x, int) for x in v):
                raise EmbedKDError(f"{where}: {f.name} must be a list of whole numbers, got {v!r}")
        elif base is dict and not isinstance(v, dict):
            raise EmbedKDError(f"{where}: {f.name} must be a mapping, got {v!r}")


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Apply ``key.sub=value`` overrides (value parsed by ``yaml.safe_load``) and re-check types."""
    raw = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise EmbedKDError(f"--set {item!r}: expected key=value (e.g. train.lr=1e-4)")
        key, _, text = item.partition("=")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise EmbedKDError(f"--set {item!r}: value is not valid YAML ({describe_parse_error(exc)})") from None
        _set_key(raw, key, value, f"--set {item!r}")
    return _build(TrainConfig, raw, "config (after --set)")


def _set_key(raw: dict, key: str, value: Any, where: str) -> None:
    """Set the dotted ``key`` of a raw config mapping; ``where`` names the setting in errors."""
    if isinstance(value, str) and _looks_float(value):
        value = float(value)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise EmbedKDError(f"{where}: unknown section {part!r}")
        node = node[part]
    if parts[-1] not in node:
        raise EmbedKDError(f"{where}: unknown key {key!r}")
    node[parts[-1]] = value


#: what a phase may not change: where the result goes, the chain itself, the student (each phase starts
#: from the previous phase's output) and the device (--device applies to every phase)
PHASE_FIXED = ("output", "phases", "student", "device")
_PHASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


def phase_configs(cfg: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """The runs of a config with ``phases`` (:mod:`embed_kd.training.phases`): ``[(name, config), ...]``.

    Phase 1 (``base``) is the config itself; phase *k* > 1 is the same config with its own ``set``
    applied (every phase starts from the *base* config, not from the previous phase's settings) and
    the previous phase's output as its student. Every phase but the last writes
    ``OUTPUT.phases/<k>-<name>``; the last writes ``OUTPUT``. Each phase config is built and
    validated here, so a bad key fails before anything trains.

    >>> cfg = TrainConfig.from_dict({"data": "d", "scores": "s", "output": "runs/st",
    ...     "student": {"from_teacher": True, "keep_layers": [0, 2]},
    ...     "phases": [{"name": "general", "set": {"losses.score": "none", "train.lr": "1e-4"}}]})
    >>> [(name, c.output, c.student.describe(), c.losses.score, c.train.lr) for name, c in phase_configs(cfg)]
    [('base', 'runs/st.phases/1-base', 'teacher layers [0, 2]', 'margin_mse', 0.0002), ('general', 'runs/st', 'model runs/st.phases/1-base', 'none', 0.0001)]
    """
    if not cfg.phases:
        return [("base", cfg)]
    out = Path(cfg.output)
    base = cfg.to_dict()
    base["phases"] = []
    plans: list[tuple[str, dict]] = [("base", base)]
    names = {"base"}
    for i, entry in enumerate(cfg.phases):
        where = f"config: phases[{i}]"
        if not isinstance(entry, dict):
            raise EmbedKDError(f"{where}: expected a mapping {{name: ..., set: {{key: value}}}}, got {entry!r}")
        unknown = sorted(set(entry) - {"name", "set"})
        if unknown:
            raise EmbedKDError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (allowed: name, set)")
        name = entry.get("name", f"phase{i + 2}")
        if not isinstance(name, str) or not _PHASE_NAME.match(name):
            raise EmbedKDError(f"{where}.name = {name!r}: use letters, digits, '-', '_' or '.' (at most 40)")
        if name in names:
            raise EmbedKDError(f"{where}.name = {name!r}: two phases have this name")
        names.add(name)
        sets = entry.get("set")
        if not isinstance(sets, dict) or not sets:
            raise EmbedKDError(f"{where}.set: expected a non-empty mapping of config keys to values, "
                               f"e.g. {{losses.score: none, train.max_steps: 1200}}")
        raw = copy.deepcopy(base)
        for key, value in sets.items():
            if not isinstance(key, str) or key.split(".")[0] in PHASE_FIXED:
                raise EmbedKDError(f"{where}.set: {key!r} cannot change between phases (fixed: "
                                   f"{', '.join(PHASE_FIXED)}; each phase trains the previous phase's output)")
            _set_key(raw, key, value, f"{where}.set.{key}")
        plans.append((name, raw))
    runs = []
    for k, (name, raw) in enumerate(plans):
        last = k == len(plans) - 1
        raw = copy.deepcopy(raw)
        raw["output"] = str(out) if last else str(out.with_name(out.name + ".phases") / f"{k + 1}-{name}")
        if k:  # the previous phase's output, as it is (a cut, a projection: already in its weights)
            raw["student"] = {**dataclasses.asdict(StudentSpec(type=cfg.student.type)),
                              "model": runs[-1][1].output, "max_seq_length": cfg.student.max_seq_length}
        where = "config" if not k else f"config: phases[{k - 1}] ({name})"
        phase = _build(TrainConfig, raw, where)
        phase.device_from = cfg.device_from
        runs.append((name, phase))
    return runs


def _looks_float(text: str) -> bool:  # yaml 1.1 reads "1e-4" as a string
    try:
        float(text)
    except ValueError:
        return False
    return True


def with_cli(cfg: TrainConfig, **values) -> TrainConfig:
    """Copy of ``cfg`` with top-level/student CLI flags applied (None = not given)."""
    cfg = copy.deepcopy(cfg)
    for key, val in values.items():
        if val is None:
            continue
        if key.startswith("student."):
            setattr(cfg.student, key.split(".", 1)[1], val)
        else:
            setattr(cfg, key, val)
    return cfg


def config_from_cli(config_file: str | None, *, student_type: str | None = None, overrides: Sequence[str] = (),
                    **flags) -> TrainConfig:
    """The resolved config of ``embed-kd train``: the YAML file (or the defaults), then the CLI flags
    (``flags``: top-level keys and ``student.*``; None = not given), then ``--set`` overrides.

    ``--student`` replaces a cut-from-teacher student; ``--student-type sparse`` also sets what a
    SPLADE student needs (it encodes its own documents and has no alignment loss:
    ``losses.align: none``, ``losses.score_documents: student``) — ``--set`` can still change them.

    >>> cfg = config_from_cli(None, student_type="sparse", data="d", overrides=["train.lr=1e-4"])
    >>> cfg.student.type, cfg.losses.align, cfg.losses.score_documents, cfg.data, cfg.train.lr
    ('sparse', 'none', 'student', 'd', 0.0001)

    ``device_from`` records which of them set ``device`` (``--set device`` over ``--device`` over
    the file), so a bad value's error names it:

    >>> config_from_cli(None, device="cuda:1").device_from
    '--device'
    >>> config_from_cli(None, device="cuda:1", overrides=["device=cpu"]).device_from
    '--set device'
    """
    if config_file:
        cfg = TrainConfig.from_yaml(config_file, student_type=student_type)
    else:  # a static student's train.* defaults apply through the raw mapping
        cfg = TrainConfig.from_dict({"student": {"type": student_type}} if student_type else {}, source="--student-type")
    device_from = ("--set device" if any(o.partition("=")[0].strip() == "device" for o in overrides) else
                   "--device" if flags.get("device") is not None else
                   f"{config_file}: device" if config_file and cfg.device is not None else TrainConfig.device_from)
    cfg = with_cli(cfg, **flags)
    if flags.get("student.model"):
        cfg.student.from_teacher, cfg.student.keep_layers = False, None
    if student_type:
        cfg.student.type = student_type
        if student_type == "sparse":
            cfg.losses.align, cfg.losses.score_documents = "none", "student"
    cfg = apply_overrides(cfg, list(overrides))
    cfg.device_from = device_from
    return cfg
