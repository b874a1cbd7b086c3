"""Fine-tune an in-domain cross-encoder teacher with sentence-transformers' ``CrossEncoderTrainer``
(a training run, so it lives in ``training``; the teacher it writes is a ``teachers`` input).

``embed-kd train-teacher`` turns labelled (query, document) pairs into a re-ranker that
``eval --rerank``, ``eval --ensemble`` and ``score-teacher --teacher DIR`` load with
``CrossEncoder(DIR)``.

Pipeline:

1. the split (``train``) is divided into training queries and a **dev slice**
   (:mod:`embed_kd.teachers.dev_split`: same ``dev_queries``/``seed`` as ``eval --ensemble``'s
   weight fitting, so the cross-encoder never trains on the queries its ensemble weight is chosen
   on; a test split is refused);
2. **hard negatives** for each training query: ``negatives`` documents sampled (seeded) from the
   top ``neg_depth`` of BM25 *and* of a dense retriever (half from each, mixed), judged positives
   excluded;
3. **targets**: ``labels`` (qrels: 1 for a judged positive, 0 otherwise), ``ensemble`` (the
   BM25+dense per-query z-score fusion over the query's candidates — distillation of the ensemble
   teacher), or ``ensemble+labels`` (``z + label_boost · label``: the ensemble's order among
   negatives, judged positives lifted above it);
4. a loss from ``sentence_transformers.cross_encoder.losses``:

   ==============  ================================  =====================================
   ``--loss``      loss                              one training example
   ==============  ================================  =====================================
   ``bce``         BinaryCrossEntropyLoss            (query, doc) → label in [0, 1]
   ``listnet``     ListNetLoss                       (query, [docs]) → [targets]
   ``lambdaloss``  LambdaLoss (NDCGLoss2++)          (query, [docs]) → [graded labels]
   ``mse``         MSELoss                           (query, doc) → target score
   ``margin-mse``  MarginMSELoss                     (query, pos, neg) → target(pos) − target(neg)
   ==============  ================================  =====================================

5. the dev slice's first ``eval_queries`` queries are re-ranked (their first-stage top
   ``eval_depth`` plus positives) by ``CrossEncoderRerankingEvaluator`` every ``eval_steps``;
   the best checkpoint by dev nDCG@10 is kept (``load_best_model_at_end``), optional early stopping;
6. the model is saved atomically to ``output`` with sentence-transformers' model card
   (``README.md``) and ``embed_kd_teacher.json`` (schema ``embed-kd/cross-encoder-teacher@1``)::

       {"schema", "created", "base", "base_fingerprint", "model_fingerprint", "config": {...},
        "dataset": {"name", "split", "corpus_fingerprint", "n_train_queries", "n_dev_queries",
                    "dev_query_ids_fingerprint"},
        "examples": n, "train": {"steps", "seconds", "stopped_by_time_budget", "train_loss", "precision"},
        "device": {"device", "type", "name"} (embed_kd.device.device_info),
        "dev": {"ndcg@10 before", "ndcg@10 after", "first_stage ndcg@10"}, "versions"}
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from embed_kd.data.beir import BeirDataset, doc_text
from embed_kd.data.fingerprint import fingerprint_corpus, fingerprint_json
from embed_kd.device import (current_device, device_info, pin_trainer_device, trainer_device_arguments,
                             training_precision)
from embed_kd.errors import EmbedKDError
from embed_kd.io import Artifact, atomic_dir, atomic_write_json, claim_output, sweep_stale, utc_now, versions
from embed_kd.models import fingerprint_model, forget_fingerprint, load_cross_encoder
from embed_kd.numeric import check_finite_weights, finite_number
from embed_kd.runs import top_k
from embed_kd.teachers.dev_split import carve_dev_slice
from embed_kd.teachers.ensemble import EnsembleConfig, FirstStageMember, first_stage_scores
from embed_kd.teachers.fusion import fuse_runs
from embed_kd.training.finite_guard import NonFiniteLossError, diverged_message, guard_losses
from embed_kd.training.lifecycle import time_budget_callback

logger = logging.getLogger(__name__)
SCHEMA = "embed-kd/cross-encoder-teacher@1"
#: the ownership rule (:func:`embed_kd.io.claim_output`): ``--overwrite`` replaces only a teacher this wrote
ARTIFACT = Artifact(SCHEMA, "embed_kd_teacher.json", "cross-encoder teacher (train-teacher output)")
LOSSES = ("bce", "listnet", "lambdaloss", "mse", "margin-mse")
TARGETS = ("labels", "ensemble", "ensemble+labels")


@dataclass
class TrainTeacherConfig:
    base: str = "minilm-l6"
    dense_model: str = "minilm-l6"
    loss: str = "listnet"
    targets: str = "ensemble+labels"
    label_boost: float = 3.0
    negatives: int = 7
    neg_depth: int = 30
    max_positives: int = 2
    max_length: int = 256
    epochs: float = 1.0
    max_steps: int = -1
    max_minutes: float | None = None
    learning_rate: float = 5e-5
    batch_size: int = 4
    warmup_ratio: float = 0.1
    dev_queries: int = 100
    seed: int = 0
    precision: str = "auto"  # auto (bf16 / fp16 on a GPU, fp32 on CPU) | fp32 | bf16 | fp16 (embed_kd.device)
    eval_queries: int = 40
    eval_depth: int = 20
    eval_steps: int | None = None
    early_stopping_patience: int | None = None
    limit_queries: int | None = None

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise EmbedKDError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.targets not in TARGETS:
            raise EmbedKDError(f"targets must be one of {list(TARGETS)}, got {self.targets!r}")
        if self.loss == "lambdaloss" and self.targets != "labels":
            raise EmbedKDError("lambdaloss uses graded labels as gains: use --targets labels")
        if self.loss in ("mse", "margin-mse") and self.targets == "labels":
            raise EmbedKDError(f"{self.loss} distils teacher scores: use --targets ensemble or ensemble+labels")
        if self.negatives < 1 or self.neg_depth < 1:
            raise EmbedKDError("--negatives and --neg-depth must be ≥ 1")
        for flag, key in (("--label-boost", "label_boost"), ("--epochs", "epochs"), ("--max-minutes", "max_minutes"),
                          ("--lr", "learning_rate"), ("warmup_ratio", "warmup_ratio")):
            value = getattr(self, key)
            if value is not None:
                finite_number(value, flag)  # click's float type accepts nan and inf
        if not self.learning_rate > 0 or not self.epochs > 0 or (self.max_minutes is not None and self.max_minutes <= 0):
            raise EmbedKDError("--lr, --epochs and --max-minutes must be > 0")


# ---- training examples --------------------------------------------------------------------------------


def build_examples(config: TrainTeacherConfig, dataset: BeirDataset, candidates: dict, targets: dict) -> dict[str, list]:
    """Training columns for ``config.loss`` (pure: no model).

    ``candidates[qid] = {"bm25": [doc ids by rank], "dense": [...]}``; ``targets[qid][doc] = float``
    for every candidate and judged positive (already including the label boost when asked).

    >>> ds = BeirDataset("t", None, "train", {d: {"title": "", "text": d} for d in "abcdef"},
    ...                  {"q": "query"}, {"q": {"a": 1}})
    >>> cfg = TrainTeacherConfig(loss="listnet", targets="labels", negatives=2)
    >>> cols = build_examples(cfg, ds, {"q": {"bm25": ["a", "b", "c"], "dense": ["d", "a"]}},
    ...                       {"q": {d: 0.0 for d in "abcdef"}})
    >>> cols["query"], len(cols["docs"][0]), cols["labels"][0][0], sorted(cols["labels"][0][1:])
    (['query'], 3, 1.0, [0.0, 0.0])
    """
    rng = random.Random(config.seed)
    cols: dict[str, list] = {}
    use_labels = config.targets == "labels"
    for q in dataset.queries:
        judged = dataset.qrels[q]
        pos = [d for d, r in judged.items() if r > 0][: config.max_positives]
        if not pos:
            continue
        pools = [[d for d in candidates[q].get(src, [])[: config.neg_depth] if d not in judged]
                 for src in ("bm25", "dense")]
        negs: list[str] = []
        for pool in pools:
            rng.shuffle(pool)
        while len(negs) < config.negatives and any(pools):
            for pool in pools:  # alternate BM25 / dense so both kinds of hard negatives are present
                while pool and pool[0] in negs:
                    pool.pop(0)
                if pool and len(negs) < config.negatives:
                    negs.append(pool.pop(0))
        if not negs:
            continue
        qtext = dataset.queries[q]

        def target(d: str) -> float:
            return float(judged.get(d, 0) > 0) if use_labels else float(targets[q][d])

        if config.loss in ("listnet", "lambdaloss"):
            docs = pos + negs
            cols.setdefault("query", []).append(qtext)
            cols.setdefault("docs", []).append([doc_text(dataset.corpus[d]) for d in docs])
            labels = [float(judged[d]) if config.loss == "lambdaloss" else target(d) for d in pos]
            labels += [0.0 if config.loss == "lambdaloss" else target(d) for d in negs]
            cols.setdefault("labels", []).append(labels)
        elif config.loss in ("bce", "mse"):
            for d in pos + negs:
                cols.setdefault("query", []).append(qtext)
                cols.setdefault("doc", []).append(doc_text(dataset.corpus[d]))
                lab = float(judged.get(d, 0) > 0) if config.loss == "bce" else target(d)
                cols.setdefault("label", []).append(lab)
        else:  # margin-mse
            for p in pos:
                for n in negs:
                    cols.setdefault("query", []).append(qtext)
                    cols.setdefault("positive", []).append(doc_text(dataset.corpus[p]))
                    cols.setdefault("negative", []).append(doc_text(dataset.corpus[n]))
                    cols.setdefault("label", []).append(target(p) - target(n))
    if not cols:
        raise EmbedKDError("no training examples: no query has both a judged positive and a negative candidate")
    return cols


def mine_candidates(config: TrainTeacherConfig, dataset: BeirDataset, *, cache_dir=None, use_cache: bool = True,
                    show_progress: bool = True, depth: int | None = None):
    """BM25 + dense candidates for every query of ``dataset`` and the ensemble's fused z-scores on them.

    Returns ``(candidates, fused, members)`` with ``candidates[qid] = {"bm25": [...], "dense": [...]}``.
    """
    depth = depth or config.neg_depth
    ens = EnsembleConfig.from_dict({"members": [{"name": "bm25", "kind": "bm25", "k": depth},
                                                {"name": "dense", "kind": "bi-encoder", "model": config.dense_model,
                                                 "k": depth}]})
    members = [FirstStageMember(m, dataset, cache_dir=cache_dir, use_cache=use_cache, show_progress=show_progress)
               for m in ens.members]
    queries = dict(dataset.queries)
    retrieved, _ = first_stage_scores(members, queries)
    # targets are needed on the candidates *and* the judged positives (which may not be retrieved)
    pool = {q: sorted({d for r in retrieved.values() for d in r.get(q, {})} | set(dataset.qrels[q])) for q in queries}
    scores = {m.spec.name: m.score(queries, pool) for m in members}
    fused = fuse_runs(scores, norm="zscore")
    candidates = {q: {name: sorted(run.get(q, {}), key=lambda d: -run[q][d]) for name, run in retrieved.items()}
                  for q in queries}
    return candidates, fused, members


# ---- training -----------------------------------------------------------------------------------------


def _make_loss(config: TrainTeacherConfig, model):
    from sentence_transformers.cross_encoder import losses

    if config.loss == "bce":
        return losses.BinaryCrossEntropyLoss(model)
    if config.loss == "listnet":
        return losses.ListNetLoss(model, mini_batch_size=16)
    if config.loss == "lambdaloss":
        return losses.LambdaLoss(model, mini_batch_size=16)
    if config.loss == "mse":
        return losses.MSELoss(model)
    return losses.MarginMSELoss(model)


def train_teacher(config: TrainTeacherConfig, dataset: BeirDataset, output: str | Path, *, overwrite: bool = False,
                  cache_dir=None, use_cache: bool = True, show_progress: bool = True) -> dict:
    """Fine-tune a cross-encoder on ``dataset`` (a train split) and save it to ``output``; returns the manifest."""
    import datasets
    import torch
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator


    config.validate()
    claim_output(output, ARTIFACT, overwrite=overwrite)
    t0 = time.perf_counter()
    train_ds, dev_ds = carve_dev_slice(dataset, config.dev_queries, config.seed, what="teacher training data")
    if config.limit_queries:
        train_ds = train_ds.sliced(config.limit_queries)
    logger.info("train-teacher: %d training queries, %d dev queries (split %s)", len(train_ds.queries),
                len(dev_ds.queries), dataset.split)

    candidates, fused, members = mine_candidates(config, train_ds, cache_dir=cache_dir, use_cache=use_cache,
                                                 show_progress=show_progress)
    if config.targets == "ensemble+labels":
        targets = {q: {d: s + config.label_boost * float(train_ds.qrels[q].get(d, 0) > 0) for d, s in docs.items()}
                   for q, docs in fused.items()}
    else:
        targets = fused
    cols = build_examples(config, train_ds, candidates, targets)
    train_data = datasets.Dataset.from_dict(cols)
    logger.info("train-teacher: %d training examples (%s, targets %s)", len(train_data), config.loss, config.targets)

    # dev re-ranking samples: the ensemble's first-stage top eval_depth (positives always included)
    eval_dev = dev_ds.sliced(config.eval_queries) if config.eval_queries < len(dev_ds.queries) else dev_ds
    _, dev_scores = first_stage_scores(members, dict(eval_dev.queries))
    dev_first = top_k(fuse_runs(dev_scores, norm="zscore"), config.eval_depth)
    samples = [{"query": eval_dev.queries[q],
                "positive": [doc_text(eval_dev.corpus[d]) for d, r in eval_dev.qrels[q].items() if r > 0],
                "documents": [doc_text(eval_dev.corpus[d]) for d in dev_first[q]]} for q in eval_dev.queries]
    evaluator = CrossEncoderRerankingEvaluator(samples, at_k=10, always_rerank_positives=False, name="dev",
                                               batch_size=32, show_progress_bar=False, write_csv=False)

    device = current_device()  # --device (select_device), else $EMBED_KD_DEVICE / auto
    precision = training_precision(config.precision, device)
    torch.manual_seed(config.seed)  # the new classification head's initialisation
    # the base gets a new classification head here (that is the point): no head check for this role
    model = load_cross_encoder(config.base, max_length=config.max_length, role="train-teacher --base",
                               require_head=False)
    if model.num_labels != 1:
        raise EmbedKDError(f"base model '{config.base}' has {model.num_labels} output labels; a 1-label scorer is needed")
    base_fp = fingerprint_model(model)
    card = getattr(model, "model_card_data", None)
    if card is not None:
        card.language = ["en"]
        card.license = "apache-2.0"
        card.model_name = (f"cross-encoder teacher fine-tuned from {config.base} on {dataset.name}/{dataset.split} "
                           f"by embed-kd")
    before = evaluator(model)
    logger.info("dev before training: %s", before)

    steps_per_epoch = max(1, -(-len(train_data) // config.batch_size))
    total_steps = config.max_steps if config.max_steps > 0 else int(steps_per_epoch * config.epochs)
    eval_steps = config.eval_steps or max(1, total_steps // 4)
    # named like an atomic write's temporary (.NAME.pidPID-*.tmp): a kill -9 leaves it to the next run's sweep
    out_abs = Path(str(output)).resolve()
    sweep_stale(out_abs)
    ckpt = Path(tempfile.mkdtemp(prefix=f".{out_abs.name}.pid{os.getpid()}-ckpt-", suffix=".tmp", dir=out_abs.parent))
    budget = time_budget_callback(config.max_minutes * 60, evaluate=True) if config.max_minutes else None
    callbacks = [budget] if budget else []
    if config.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    args = CrossEncoderTrainingArguments(
        output_dir=str(ckpt), num_train_epochs=config.epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
        warmup_ratio=config.warmup_ratio, eval_strategy="steps", eval_steps=eval_steps, save_strategy="steps",
        save_steps=eval_steps, save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="eval_dev_ndcg@10", greater_is_better=True, logging_steps=max(1, eval_steps // 4),
        report_to="none", seed=config.seed, dataloader_num_workers=0, **trainer_device_arguments(device, precision),
        disable_tqdm=not show_progress, save_only_model=True,
    )
    loss = _make_loss(config, model)
    pin_trainer_device(args, device)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=train_data, loss=loss,
                                  evaluator=evaluator, callbacks=callbacks)
    guard_losses({config.loss: loss}, step=lambda: trainer.state.global_step)  # NaN/inf loss: stop, no output
    t = time.perf_counter()
    try:
        try:
            out = trainer.train()
        except NonFiniteLossError as exc:  # the finally below removes the checkpoints: nothing is kept
            raise NonFiniteLossError(diverged_message(exc, work=str(ckpt), lr=config.learning_rate)) from None
        train_s = time.perf_counter() - t
        after = evaluator(model)
        forget_fingerprint(model)  # the cached fingerprint is the base model's
        logger.info("dev after training (best checkpoint): %s", after)
        manifest = {
            "schema": SCHEMA,
            "created": utc_now(),
            "base": config.base, "base_fingerprint": base_fp, "model_fingerprint": fingerprint_model(model),
            "config": asdict(config),
            "dataset": {"name": dataset.name, "split": dataset.split,
                        "corpus_fingerprint": fingerprint_corpus(dataset.corpus),
                        "n_train_queries": len(train_ds.queries), "n_dev_queries": len(dev_ds.queries),
                        "dev_query_ids_fingerprint": fingerprint_json(sorted(dev_ds.queries))},
            "examples": len(train_data),
            "train": {"steps": int(out.global_step), "seconds": train_s, "train_loss": float(out.training_loss),
                      "stopped_by_time_budget": bool(budget and budget.stopped), "precision": precision,
                      "best_checkpoint": trainer.state.best_model_checkpoint and Path(trainer.state.best_model_checkpoint).name,
                      "log": [r for r in trainer.state.log_history]},
            "dev": {"eval_queries": len(samples), "eval_depth": config.eval_depth,
                    "before": {k: float(v) for k, v in before.items()},
                    "after": {k: float(v) for k, v in after.items()}},
            "seconds_total": time.perf_counter() - t0,
            "device": device_info(device),
            "versions": versions(),
        }
        check_finite_weights(model, f"{output}: the trained cross-encoder")  # never publish NaN weights
        with atomic_dir(output, overwrite=overwrite, artifact=ARTIFACT) as tmp:
            model.save_pretrained(str(tmp))
            atomic_write_json(tmp / "embed_kd_teacher.json", manifest)
            card = tmp / "README.md"
            text = card.read_text(encoding="utf-8") if card.is_file() else f"# {Path(str(output)).name}\n"
            card.write_text(text + "\n" + _card_section(manifest), encoding="utf-8")
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
    return manifest


def _card_section(m: dict) -> str:
    c, d = m["config"], m["dev"]
    key = "dev_ndcg@10"
    return "\n".join([
        "## embed-kd training recipe", "",
        f"Trained with `embed-kd train-teacher` from `{m['base']}` on {m['dataset']['name']}/{m['dataset']['split']} "
        f"({m['dataset']['n_train_queries']} training queries; {m['dataset']['n_dev_queries']} held out as the dev slice).",
        "",
        f"- loss: `{c['loss']}`, targets: `{c['targets']}`, negatives: {c['negatives']} per query from the top "
        f"{c['neg_depth']} of BM25 and `{c['dense_model']}`",
        f"- max_length {c['max_length']}, lr {c['learning_rate']}, batch {c['batch_size']}, "
        f"steps {m['train']['steps']} ({m['train']['seconds']:.0f} s on {(m.get('device') or {}).get('name', 'CPU')})",
        f"- dev re-ranking nDCG@10 (top {d['eval_depth']} of BM25+dense fusion, {d['eval_queries']} queries): "
        f"{d['before'].get(key, float('nan')):.4f} before → {d['after'].get(key, float('nan')):.4f} after; "
        f"first stage {d['after'].get('dev_base_ndcg@10', float('nan')):.4f}",
        "",
        "Load: `CrossEncoder(path)`; scores are raw logits (higher = more relevant).", "",
    ])
