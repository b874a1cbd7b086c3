r"""Build a sparse (SPLADE) student: an MLM head over an encoder, max-pooled log-saturated activations.

A SPLADE model (Formal et al. 2021, *SPLADE v2*, arXiv:2109.10086) maps a text to one weight per
vocabulary term:

.. math::

    w_t(x) = \max_{i \in x} \log\bigl(1 + \mathrm{ReLU}(\ell_{i,t})\bigr), \qquad
    \ell_{i,\cdot} = E\,\mathrm{LN}\bigl(\mathrm{GELU}(W h_i + c)\bigr) + b

where :math:`h_i` is the encoder's last hidden state of token :math:`i`, :math:`W, c` and the
LayerNorm form the MLM *transform*, :math:`E` (vocab × hidden) is the decoder — tied to the input
word embeddings — and :math:`b` the per-term output bias. In sentence-transformers this is a
``SparseEncoder`` of two modules: ``Transformer(..., transformer_task="fill-mask")`` (the
``*ForMaskedLM`` model; the legacy ``MLMTransformer`` is deprecated in v6) and
``SpladePooling("max", "relu")``. ``SparseEncoder(path)`` loads the saved folder.

Where the student comes from (:func:`build_sparse_student`):

- a ``SparseEncoder`` folder (continue training) or a ``*ForMaskedLM`` checkpoint: loaded as it is;
- an encoder **without** an MLM head (e.g. the bundled all-MiniLM-L6-v2, a ``BertModel``, optionally
  cut to ``keep_layers``): a ``BertForMaskedLM`` is built from its config, the encoder weights are
  copied in, and the head is initialised by :func:`init_tied_mlm_head`:

  ================================  ==========================================================
  decoder weight :math:`E`          **tied** to the input word embeddings (the same tensor)
  transform dense :math:`W, c`      identity matrix, zero bias
  transform LayerNorm               weight 1, bias 0
  output bias :math:`b`             the constant ``head_bias`` for every term (default -5.0)
  ================================  ==========================================================

  With this start the logit of term :math:`t` at token :math:`i` is (up to the GELU and the
  normalisation) the dot product of the token's hidden state with :math:`t`'s input embedding. On
  SciFact abstracts with MiniLM the token's *own* id is the top-scoring term (median rank 0) with a
  median logit of about 7.0, while the 99.99th percentile over the vocabulary is about 5.3; a bias
  of -5 therefore makes each token activate itself and a handful of near neighbours — the student
  starts as an exact-match-plus-expansion lexical model instead of a dense 15,000-term vector
  (with ``b = 0`` half of the vocabulary is positive).

The choice is recorded in the student's manifest and model card (``student.head_init``).

>>> describe_head_init(-5.0)
'MLM head built for this student: decoder tied to the input word embeddings; transform dense = identity (bias 0); transform LayerNorm weight 1 / bias 0; output bias -5.0 for every term'
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from embed_kd.errors import EmbedKDError
from embed_kd.models import is_sparse_folder, load_sentence_transformer
from embed_kd.presets import locate_model
from embed_kd.students.build import cut_layers

logger = logging.getLogger(__name__)


@dataclass
class SparseHeadOptions:
    """How the SPLADE head and pooling are set up (``sparse:`` section of the training config)."""

    pooling: str = "max"                 # SpladePooling strategy: max (SPLADE v2+) | sum (SPLADE v1)
    activation: str = "relu"             # relu | log1p_relu
    head_bias: float = -5.0              # initial output bias of a *built* head (see module docstring)
    query_length: int | None = 32        # max tokens of a query (Transformer.query_length)
    document_length: int | None = 256    # max tokens of a document (Transformer.document_length)


def describe_head_init(head_bias: float) -> str:
    """One sentence saying how a built MLM head was initialised (goes into the manifest and card)."""
    return ("MLM head built for this student: decoder tied to the input word embeddings; transform dense = "
            "identity (bias 0); transform LayerNorm weight 1 / bias 0; "
            f"output bias {float(head_bias)} for every term")


def init_tied_mlm_head(mlm, head_bias: float) -> None:
    """Initialise a ``BertForMaskedLM`` head in place (table in the module docstring); checks the tie.

    >>> from transformers import BertConfig, BertForMaskedLM
    >>> m = BertForMaskedLM(BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1,
    ...                                num_attention_heads=1, intermediate_size=8))
    >>> init_tied_mlm_head(m, -2.0)
    >>> m.cls.predictions.decoder.weight is m.bert.embeddings.word_embeddings.weight
    True
    >>> float(m.cls.predictions.bias.detach()[0]), m.cls.predictions.transform.dense.weight.diagonal().tolist()
    (-2.0, [1.0, 1.0, 1.0, 1.0])
    """
    import torch

    preds = getattr(getattr(mlm, "cls", None), "predictions", None)
    if preds is None or not hasattr(preds, "transform"):
        raise EmbedKDError(f"sparse student: building an MLM head is supported for BERT-like encoders "
                           f"(BertForMaskedLM), not {type(mlm).__name__}")
    mlm.config.tie_word_embeddings = True
    words = mlm.get_input_embeddings()
    preds.decoder.weight = words.weight  # tie: one tensor, trained together
    hidden = preds.transform.dense.weight.shape[0]
    with torch.no_grad():
        preds.transform.dense.weight.copy_(torch.eye(hidden))
        preds.transform.dense.bias.zero_()
        preds.transform.LayerNorm.weight.fill_(1.0)
        preds.transform.LayerNorm.bias.zero_()
        preds.bias.fill_(float(head_bias))
        if getattr(preds.decoder, "bias", None) is not None and preds.decoder.bias is not preds.bias:
            preds.decoder.bias.fill_(float(head_bias))
    if mlm.get_output_embeddings().weight is not words.weight:
        raise EmbedKDError("sparse student: the MLM decoder could not be tied to the word embeddings")


def _is_mlm_checkpoint(source: str | Path) -> bool:
    cfg = Path(source) / "config.json"
    if not cfg.is_file():
        return False
    try:
        archs = json.loads(cfg.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(a.endswith("ForMaskedLM") for a in archs)


def sparse_encoder_from_mlm_folder(folder: str | Path, opts: SparseHeadOptions, *, max_seq_length: int | None = None):
    """``SparseEncoder`` = ``Transformer(folder, fill-mask)`` + ``SpladePooling`` (what ST builds for an MLM)."""
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    transformer = Transformer(str(folder), transformer_task="fill-mask", max_seq_length=max_seq_length,
                              query_length=opts.query_length, document_length=opts.document_length)
    pooling = SpladePooling(pooling_strategy=opts.pooling, activation_function=opts.activation)
    return SparseEncoder(modules=[transformer, pooling], device="cpu")


def mlm_from_encoder(encoder_model, tokenizer, head_bias: float, out_dir: str | Path) -> Path:
    """Save a ``BertForMaskedLM`` = ``encoder_model``'s weights + a tied, initialised head, to ``out_dir``."""
    import copy

    from transformers import BertForMaskedLM

    if getattr(encoder_model.config, "model_type", None) != "bert":
        raise EmbedKDError(f"sparse student: the encoder is a {encoder_model.config.model_type!r} model; building "
                           "an MLM head is supported for BERT-like encoders (pass a *ForMaskedLM checkpoint instead)")
    cfg = copy.deepcopy(encoder_model.config)
    cfg.architectures = ["BertForMaskedLM"]
    cfg.tie_word_embeddings = True
    mlm = BertForMaskedLM(cfg)
    missing, unexpected = mlm.bert.load_state_dict(encoder_model.state_dict(), strict=False)
    missing = [k for k in missing if not k.startswith("pooler.")]  # MLM's BertModel has no pooler
    unexpected = [k for k in unexpected if not k.startswith("pooler.")]
    if missing or unexpected:
        raise EmbedKDError(f"sparse student: encoder weights do not fit BertForMaskedLM (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    init_tied_mlm_head(mlm, head_bias)
    out_dir = Path(out_dir)
    mlm.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def build_sparse_student(spec, teacher_spec: str | None = None, *, opts: SparseHeadOptions | None = None):
    """Make the sparse student described by ``spec`` (an :class:`~embed_kd.students.build.StudentSpec`).

    Returns ``(model, info)``; ``info`` has ``init`` (what it was built from) and ``head_init``
    (how the MLM head was initialised, or that it came with the checkpoint).
    """
    from sentence_transformers.sparse_encoder import SparseEncoder

    opts = opts or SparseHeadOptions()
    if spec.hidden_size:
        raise EmbedKDError("sparse student: a narrow randomly initialised student (student.hidden_size) is not "
                           "supported; initialise from an encoder (student.model or --student-from-teacher)")
    base = spec.model if spec.model else teacher_spec
    if not base:
        raise EmbedKDError("sparse student: pass the encoder to start from (--student PATH|PRESET, or "
                           "--student-from-teacher with --teacher)")
    source, _ = locate_model(base)
    info = {"init": f"sparse (SPLADE) from {base}"}
    if is_sparse_folder(source):
        if spec.keep_layers is not None:
            raise EmbedKDError("sparse student: keep_layers applies when building from a dense encoder, not to a "
                               "SparseEncoder folder")
        model = SparseEncoder(str(source), device="cpu")
        info["head_init"] = f"MLM head loaded with the SparseEncoder {base}"
    elif _is_mlm_checkpoint(source) and spec.keep_layers is None:
        model = sparse_encoder_from_mlm_folder(source, opts, max_seq_length=spec.max_seq_length)
        info["head_init"] = f"MLM head loaded with the *ForMaskedLM checkpoint {base}"
    else:
        dense = load_sentence_transformer(base)
        if spec.keep_layers is not None:
            dense = cut_layers(dense, spec.keep_layers)
            info["init"] += f", layers {list(spec.keep_layers)}"
        first = dense[0]
        encoder = getattr(first, "auto_model", None) or getattr(first, "model", None)
        tokenizer = getattr(first, "tokenizer", None) or getattr(first, "processor", None)
        if encoder is None or tokenizer is None:
            raise EmbedKDError(f"sparse student: {base} has no transformer + tokenizer to build an MLM head on")
        with tempfile.TemporaryDirectory() as tmp:
            mlm_from_encoder(encoder, tokenizer, opts.head_bias, tmp)
            model = sparse_encoder_from_mlm_folder(tmp, opts, max_seq_length=spec.max_seq_length
                                                   or getattr(dense, "max_seq_length", None))
        info["head_init"] = describe_head_init(opts.head_bias)
    if spec.max_seq_length:
        model.max_seq_length = int(spec.max_seq_length)
    model.embed_kd_spec = f"sparse student ({info['init']})"
    logger.info("sparse student: %s; %s", info["init"], info["head_init"])
    return model, info
