r"""Static-embedding students: a token table + mean pooling, initialised from the embedding teacher.

A static student (``student.type: static``) is a plain sentence-transformers model::

    StaticEmbedding(teacher's tokenizer, V x k table)  [-> Dense(k -> d), when static.pca_dims = k < d]
    [-> Normalize, when the teacher normalises]

It has no attention: a query's embedding is the mean of its word pieces' rows, so encoding costs a
tokenisation and a table look-up (microseconds per query on a CPU). In asymmetric search it only
encodes queries, against the teacher's document embeddings; it is trained with the dense losses
(``losses.score_documents: teacher``, Margin-MSE / KL, alignment) by
:func:`embed_kd.training.run.train_student`.

**Initialisation from the teacher** (the model2vec idea, Tulkens & van Dongen 2024; written here —
model2vec's ``distill`` extra pins an older transformers). Every vocabulary entry :math:`t` (id
:math:`i`) is encoded by the teacher as the sequence ``[CLS] t [SEP]`` (the tokenizer's special
tokens, when it has them):

.. math::

    x_t = \mathrm{pool}\big(f_{teacher}([\mathrm{CLS}], t, [\mathrm{SEP}])\big)
    \quad\text{(static.token_pooling: mean — the teacher's own pooling, before normalisation)}

or :math:`x_t = f_{teacher}(\ldots)_1`, the output vector at the token's position
(``token_pooling: token``). Optionally (``normalize_tokens``) each :math:`x_t` is L2-normalised.
With ``pca_dims = k``, the rows are centred and projected on the top-:math:`k` principal
directions :math:`C \in \mathbb{R}^{k\times d}`: :math:`x_t \leftarrow (x_t - \mu) C^\top`, and a
``Dense`` layer with weight :math:`C^\top` (bias 0) maps the pooled vector back into the teacher's
space. Then each row is weighted by how informative its token is:

- ``weighting: sif`` — smooth inverse frequency (Arora et al. 2017):
  :math:`w_t = a / (a + p_t)`, :math:`p_t` = count of :math:`t` / all tokens in the texts given
  (the training corpus and train queries, tokenised as the student tokenises); unseen tokens get 1;
- ``weighting: zipf`` — model2vec's estimate when no text is at hand: token id order taken as
  frequency rank, :math:`p_i \propto 1/(i+2)`, then the same :math:`a / (a + p_i)`;
- ``weighting: none``.

The student's embedding of a text with word pieces :math:`t_1..t_n` is then
:math:`\mathrm{normalize}\big(\frac1n\sum_j w_{t_j} x_{t_j}\big)` (the weighting is folded into the
table, so the saved model is an ordinary ``StaticEmbedding``). ``init: random`` skips all of this
(``N(0, 1)`` rows, the untrained baseline).

The raw teacher token matrix (before PCA / weighting) is cached in the embedding cache
(:class:`embed_kd.index.cache.EmbeddingCache`, schema ``embed-kd/embeddings@1``): key = teacher
fingerprint + ``"static-tokens:<pooling>:<vocabulary fingerprint>"``, ids = the vocabulary's tokens
in id order; so every static run over one teacher encodes its ~30k tokens once.

The tokenizer is a copy of the teacher's, without padding, truncating at the teacher's
``max_seq_length`` minus its special tokens (the same word pieces the teacher sees in a document
it embeds) or ``student.max_seq_length``; it is saved in the student's folder (``tokenizer.json``).

References: Tulkens & van Dongen 2024, *Model2Vec* (distilling a sentence transformer into static
embeddings: encode the vocabulary, PCA, Zipf/SIF weighting); Arora, Liang & Ma 2017, *A Simple but
Tough-to-Beat Baseline for Sentence Embeddings* (SIF); Aarsen 2025, *Train 400x faster Static
Embedding Models with Sentence Transformers* (StaticEmbedding, high learning rates);
Hofstätter et al. 2020 (Margin-MSE); LEAF 2025 (aligned query encoders against teacher documents).

>>> import numpy as np
>>> [round(float(w), 3) for w in sif_weights(np.array([0, 1, 3]), a=0.25)]  # p = 0, 1/4, 3/4
[1.0, 0.5, 0.25]
>>> [round(float(w), 3) for w in zipf_weights(2, a=1.0)]  # p = (1/2, 1/3) / (5/6) = (0.6, 0.4)
[0.625, 0.714]
>>> StaticSpec(pca_dims=128, weighting="zipf").describe()
'teacher tokens (mean pooling), PCA 128, zipf weights'
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from embed_kd.data.fingerprint import fingerprint_json
from embed_kd.errors import EmbedKDError
from embed_kd.models import fingerprint_model, model_name

logger = logging.getLogger(__name__)
INITS = ("teacher", "random")
TOKEN_POOLINGS = ("mean", "token")
WEIGHTINGS = ("sif", "zipf", "none")
CACHE_TAG = "static-tokens"

# train.* defaults of a static student, used where the config does not set them (TrainConfig): the
# table is a wide, shallow linear model, so it wants a far larger step than a transformer; weight
# decay would shrink the rows of tokens that never appear in a batch.
TRAIN_DEFAULTS = {"lr": 0.05, "batch_size": 64, "weight_decay": 0.0, "warmup_ratio": 0.05,
                  "save_steps": 100, "eval_steps": 100}


@dataclass
class StaticSpec:
    """Settings of a static student (``static:`` in a training config; ``student.type: static``)."""

    init: str = "teacher"           # teacher: each token's teacher embedding (model2vec) | random
    token_pooling: str = "mean"     # mean: the teacher's pooling of [CLS] t [SEP] | token: t's own output vector
    normalize_tokens: bool = False  # L2-normalise each token vector before PCA / weighting
    pca_dims: int | None = None     # PCA the table to k dims; a Dense (the components) maps back to the teacher's dim
    weighting: str = "sif"          # sif (counted in the training texts) | zipf (token id as rank) | none
    sif_coefficient: float = 1.0e-3  # a in a / (a + p)
    encode_batch_size: int = 512    # vocabulary entries per teacher forward pass (the init)

    def describe(self) -> str:
        if self.init == "random":
            return "random table" + (f", {self.pca_dims} dims + Dense" if self.pca_dims else "")
        parts = [f"teacher tokens ({self.token_pooling} pooling)"]
        if self.normalize_tokens:
            parts.append("normalised")
        if self.pca_dims:
            parts.append(f"PCA {self.pca_dims}")
        parts.append(f"{self.weighting} weights" if self.weighting != "none" else "unweighted")
        return ", ".join(parts)

    def validate(self) -> None:
        for key, val, allowed in (("static.init", self.init, INITS),
                                  ("static.token_pooling", self.token_pooling, TOKEN_POOLINGS),
                                  ("static.weighting", self.weighting, WEIGHTINGS)):
            if val not in allowed:
                raise EmbedKDError(f"config: {key} = {val!r}; expected one of {', '.join(allowed)}")
        if self.pca_dims is not None and (isinstance(self.pca_dims, bool) or not isinstance(self.pca_dims, int)
                                          or self.pca_dims < 1):
            raise EmbedKDError(f"config: static.pca_dims must be a positive integer or null, got {self.pca_dims!r}")
        if not self.sif_coefficient > 0:
            raise EmbedKDError(f"config: static.sif_coefficient must be > 0, got {self.sif_coefficient!r}")
        if isinstance(self.encode_batch_size, bool) or not isinstance(self.encode_batch_size, int) \
                or self.encode_batch_size < 1:
            raise EmbedKDError(f"config: static.encode_batch_size must be a positive integer, "
                               f"got {self.encode_batch_size!r}")


# ---------------------------------------------------------------------------- weights
def sif_weights(counts: np.ndarray, a: float = 1e-3) -> np.ndarray:
    """``a / (a + p)`` with ``p = counts / counts.sum()`` (all ones when nothing was counted)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    p = counts / total if total > 0 else np.zeros_like(counts)
    return (a / (a + p)).astype(np.float32)


def zipf_weights(n: int, a: float = 1e-3) -> np.ndarray:
    """model2vec's frequency estimate: id ``i`` has rank ``i``, ``p_i ∝ 1/(i+2)``; returns ``a / (a + p)``."""
    inv_rank = 1.0 / np.arange(2, n + 2, dtype=np.float64)
    p = inv_rank / inv_rank.sum()
    return (a / (a + p)).astype(np.float32)


def token_counts(tokenizer, texts: Iterable[str], vocab_size: int, batch_size: int = 1024) -> np.ndarray:
    """How often each token id occurs in ``texts`` (tokenised as the student does: no special tokens)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    batch: list[str] = []

    def flush():
        for enc in tokenizer.encode_batch(batch, add_special_tokens=False):
            if enc.ids:
                np.add.at(counts, np.asarray(enc.ids, dtype=np.int64), 1)
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return counts


def pca_project(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` centred and projected on the top-``k`` principal directions.

    Returns ``(x_k (n, k), components (k, d))``; the sign of each component is fixed (largest
    absolute loading positive) so the result is deterministic.

    >>> x = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    >>> xk, comp = pca_project(x, 1)
    >>> comp.round(3).tolist(), xk.ravel().round(3).tolist()
    ([[1.0, 0.0]], [2.0, -2.0, 0.0, 0.0])
    """
    if not 1 <= k <= x.shape[1]:
        raise EmbedKDError(f"config: static.pca_dims = {k}; must be between 1 and the teacher's dim {x.shape[1]}")
    xc = x.astype(np.float64) - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    comp = vt[:k]
    signs = np.sign(comp[np.arange(k), np.abs(comp).argmax(axis=1)])
    comp = comp * signs[:, None]
    return (xc @ comp.T).astype(np.float32), comp.astype(np.float32)


# ---------------------------------------------------------------------------- teacher token vectors
def _transformer_tokenizer(teacher):
    first = teacher[0]
    tok = getattr(first, "tokenizer", None)
    if tok is None or not hasattr(tok, "backend_tokenizer"):
        raise EmbedKDError(f"student: a static student needs a teacher whose first module has a fast tokenizer; "
                           f"{type(first).__name__} has none")
    return tok


def vocabulary(teacher) -> list[str]:
    """The teacher tokenizer's entries in id order (row ``i`` of the static table is id ``i``)."""
    tok = _transformer_tokenizer(teacher)
    n = tok.backend_tokenizer.get_vocab_size(with_added_tokens=True)
    return [t if t is not None else f"<id {i}>" for i, t in enumerate(tok.convert_ids_to_tokens(list(range(n))))]


def _special_ids(tok) -> tuple[list[int], list[int]]:
    """The ids the teacher's tokenizer puts before / after a single-sentence input."""
    ids = tok("x", add_special_tokens=True)["input_ids"]
    bare = tok("x", add_special_tokens=False)["input_ids"]
    for start in range(len(ids) - len(bare) + 1):
        if ids[start:start + len(bare)] == bare:
            return ids[:start], ids[start + len(bare):]
    return [], []


def teacher_token_vectors(teacher, *, pooling: str = "mean", batch_size: int = 512,
                          show_progress: bool = False) -> np.ndarray:
    """``(V, d)`` float32: row ``i`` = the teacher's vector of vocabulary id ``i`` (see the module docstring).

    ``mean``: every module of the teacher up to (not including) its ``Normalize``, on
    ``[CLS] i [SEP]``; ``token``: the transformer's output at ``i``'s position.
    """
    import torch
    from sentence_transformers.sentence_transformer.modules import Normalize

    if pooling not in TOKEN_POOLINGS:
        raise EmbedKDError(f"config: static.token_pooling = {pooling!r}; expected one of {', '.join(TOKEN_POOLINGS)}")
    tok = _transformer_tokenizer(teacher)
    n = tok.backend_tokenizer.get_vocab_size(with_added_tokens=True)
    before, after = _special_ids(tok)
    modules = []
    for m in teacher:
        if isinstance(m, Normalize):
            break
        modules.append(m)
    device = teacher.device
    rows = []
    starts = range(0, n, batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="teacher token vectors", unit="batch")
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.inference_mode():
            for s in starts:
                ids = torch.arange(s, min(n, s + batch_size), dtype=torch.long)
                seq = torch.cat([torch.tensor(before, dtype=torch.long).expand(len(ids), -1), ids[:, None],
                                 torch.tensor(after, dtype=torch.long).expand(len(ids), -1)], dim=1)
                feats = {"input_ids": seq.to(device), "attention_mask": torch.ones_like(seq).to(device)}
                if pooling == "token":
                    feats = modules[0](feats)
                    out = feats["token_embeddings"][:, len(before)]
                else:
                    for m in modules:
                        feats = m(feats)
                    out = feats["sentence_embedding"]
                rows.append(out.float().cpu().numpy())
    finally:
        teacher.train(was_training)
    return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)


def cached_token_vectors(teacher, *, pooling: str = "mean", cache=None, batch_size: int = 512,
                         show_progress: bool = False) -> np.ndarray:
    """:func:`teacher_token_vectors` through the embedding cache (keyed by the teacher's fingerprint)."""
    vocab = vocabulary(teacher)
    encode = lambda: teacher_token_vectors(teacher, pooling=pooling, batch_size=batch_size,  # noqa: E731
                                           show_progress=show_progress)
    if cache is None:
        return encode()
    key = cache.make_key(fingerprint_model(teacher), f"{CACHE_TAG}:{pooling}:{fingerprint_json(vocab)}",
                         getattr(teacher, "max_seq_length", None), False)
    return np.asarray(cache.get_or_encode(key, vocab, encode, model=model_name(teacher)).embeddings, dtype=np.float32)


# ---------------------------------------------------------------------------- the student
def student_tokenizer(teacher, max_seq_length: int | None = None):
    """A copy of the teacher's ``tokenizers.Tokenizer``: no padding, truncation at the teacher's word-piece budget."""
    from tokenizers import Tokenizer

    tok = _transformer_tokenizer(teacher)
    copy = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    copy.no_padding()
    before, after = _special_ids(tok)
    limit = max_seq_length or (int(teacher.max_seq_length) - len(before) - len(after)
                               if getattr(teacher, "max_seq_length", None) else None)
    if limit and limit > 0:
        copy.enable_truncation(max_length=int(limit))
    else:
        copy.no_truncation()
    return copy


def init_table(teacher, spec: StaticSpec, *, texts: Sequence[str] | None = None, cache=None, seed: int = 0,
               show_progress: bool = False, tokenizer=None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """The student's table (``(V, k)``), the PCA components (``(k, d)`` or None) and a summary dict."""
    spec.validate()
    tokenizer = tokenizer or student_tokenizer(teacher)
    d = teacher.get_embedding_dimension()
    n = tokenizer.get_vocab_size(with_added_tokens=True)
    info: dict = {"init": spec.init, "vocab_size": n, "teacher_dim": d}
    if spec.init == "random":
        rng = np.random.default_rng(seed)
        k = spec.pca_dims or d
        table = rng.standard_normal((n, k)).astype(np.float32)
        return table, (np.eye(k, d, dtype=np.float32) if spec.pca_dims else None), {**info, "dim": k}
    x = cached_token_vectors(teacher, pooling=spec.token_pooling, cache=cache, batch_size=spec.encode_batch_size,
                             show_progress=show_progress)
    if x.shape[0] != n:
        raise EmbedKDError(f"student: the teacher's vocabulary has {x.shape[0]} entries, its tokenizer {n}")
    x = np.array(x, dtype=np.float32)  # a private copy (the cache may hand out a memory map)
    if spec.normalize_tokens:
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    comp = None
    if spec.pca_dims:
        x, comp = pca_project(x, spec.pca_dims)
    if spec.weighting == "sif":
        if texts is None:
            raise EmbedKDError("student: static.weighting: sif counts tokens in the training texts; none were given "
                               "(use weighting: zipf or none)")
        counts = token_counts(tokenizer, texts, n)
        w = sif_weights(counts, spec.sif_coefficient)
        info.update(counted_tokens=int(counts.sum()), seen_vocab=int((counts > 0).sum()))
    elif spec.weighting == "zipf":
        w = zipf_weights(n, spec.sif_coefficient)
    else:
        w = np.ones(n, dtype=np.float32)
    x *= w[:, None]
    info.update(dim=int(x.shape[1]), weight_min=float(w.min()), weight_mean=float(w.mean()))
    return x, comp, info


def build_static_student(teacher, spec: StaticSpec | None = None, *, texts: Sequence[str] | None = None, cache=None,
                         max_seq_length: int | None = None, seed: int = 0, show_progress: bool = False):
    """A ``SentenceTransformer`` (StaticEmbedding [+ Dense] [+ Normalize]) initialised from ``teacher``.

    ``texts``: what the SIF weighting counts (the training corpus and train queries); ``cache``: an
    :class:`~embed_kd.index.cache.EmbeddingCache` for the teacher's token vectors.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, StaticEmbedding

    spec = spec or StaticSpec()
    tokenizer = student_tokenizer(teacher, max_seq_length)
    table, comp, info = init_table(teacher, spec, texts=texts, cache=cache, seed=seed, show_progress=show_progress,
                                   tokenizer=tokenizer)
    modules = [StaticEmbedding(tokenizer, embedding_weights=torch.from_numpy(table),
                               base_model=getattr(teacher, "embed_kd_spec", None))]
    if comp is not None:  # back into the teacher's space: (k -> d), weight = components^T
        k, d = comp.shape
        modules.append(Dense(k, d, bias=True, activation_function=torch.nn.Identity(),
                             init_weight=torch.from_numpy(np.ascontiguousarray(comp.T)),
                             init_bias=torch.zeros(d)))
    if any(isinstance(m, Normalize) for m in teacher):
        modules.append(Normalize())
    student = SentenceTransformer(modules=modules, device="cpu")
    student.similarity_fn_name = teacher.similarity_fn_name
    student.embed_kd_static_init = info  # type: ignore[attr-defined]
    logger.info("static student: %s table %dx%d%s", spec.describe(), table.shape[0], table.shape[1],
                f" + Dense to {comp.shape[1]}" if comp is not None else "")
    return student


def is_static_model(model) -> bool:
    """True when ``model``'s input module (directly, or any route of a Router) is a ``StaticEmbedding``."""
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    try:
        first = model[0]
    except (TypeError, IndexError, KeyError):
        return False
    if isinstance(first, StaticEmbedding):
        return True
    routes = getattr(first, "sub_modules", None)  # a Router's nn.ModuleDict of routes
    if routes is not None and hasattr(routes, "values"):
        return any(isinstance(seq[0], StaticEmbedding) for seq in routes.values() if len(seq))
    return False
