"""Static-student selection sweep on SciFact TRAIN data (no test query is looked at), in one process:

1. the untrained init variants of ``scripts/bench_scifact_static.py`` (VARIANTS) on all 809 train
   queries (asymmetric, MiniLM documents) -> the best init (random excluded);
2. ``embed-kd train eval/configs/scifact-static.yaml`` with that init and each listed ``--set`` list,
   into ``runs/static-sweep/NAME`` (runs are launched until BUDGET seconds have passed);
3. the run with the best dev nDCG@10 (50 held-out train queries) -> ``scripts/bench_scifact_static.py``.

    flock /tmp/embed_kd_heavy.lock .venv/bin/python scripts/sweep_scifact_static.py 540 \
      '[["a-default", []], ["b-lr0.2", ["train.lr=0.2"]], ["c-lr0.01", ["train.lr=0.01"]],
        ["d-score-only", ["losses.align=none"]], ["e-align-only", ["losses.score=none"]]]'

It ran against the config as it was at commit 1d4cd0d (mean pooling, no PCA, lr 0.05; the init it
chose and the lr of the best run were then written into the YAML). Its log:
eval/results/scifact-static-sweep.log.
"""
import json, subprocess, sys, time, os
from pathlib import Path
budget = float(sys.argv[1]); runs = json.loads(sys.argv[2]); root = Path("runs/static-sweep"); root.mkdir(parents=True, exist_ok=True)
t0 = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scifact_static import VARIANTS
from embed_kd.data import load_beir, resolve_dataset
from embed_kd.evaluation.retrieval_eval import EvalOptions, evaluate_dense
from embed_kd.index.cache import EmbeddingCache
from embed_kd.models import load_sentence_transformer
from embed_kd.students.static import StaticSpec, build_static_student
from embed_kd.training.data import split_dev
train = load_beir(resolve_dataset("scifact"), "train")
teacher = load_sentence_transformer("minilm-l6")
qids, _ = split_dev(list(train.queries), 50, 42)
texts = [train.doc_text(d) for d in train.corpus] + [train.queries[q] for q in qids]
scores = {}
for name, fields in VARIANTS:
    m = build_static_student(teacher, StaticSpec(**fields), texts=texts, cache=EmbeddingCache())
    scores[name] = evaluate_dense(train, m, teacher, options=EvalOptions(show_progress=False))["metrics"]["ndcg_at_10"]
    print(f"init {name}: train nDCG@10 {scores[name]:.4f} ({time.time() - t0:.0f}s)", flush=True)
best_init = max((n for n, _ in VARIANTS if n != "random table"), key=scores.get)
fields = dict(VARIANTS)[best_init]
init_sets = [f"static.{k}={v}" for k, v in fields.items()]
print(f"best init: {best_init} -> {init_sets}", flush=True)
del teacher
t0 = time.time()
for name, sets in runs:
    sets = init_sets + sets
    if time.time() - t0 > budget:
        print(f"{name}: skipped (budget)", flush=True); continue
    out = root / name
    cmd = [".venv/bin/embed-kd", "train", "eval/configs/scifact-static.yaml", "-o", str(out), "--threads", "2",
           "--no-progress", "-q", "--overwrite"] + [x for s in sets for x in ("--set", s)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        print(f"{name}: FAILED {r.stdout[-1500:]} {r.stderr[-3000:]}", flush=True); continue
    m = json.loads((out / "embed_kd_train.json").read_text())
    devs = [(h["step"], round(h["eval_dev_ndcg_at_10"], 4)) for h in m["training"]["log_history"] if "eval_dev_ndcg_at_10" in h]
    print(f"{name}: dev final {m['dev']['metrics_final']['dev_ndcg_at_10']:.4f} steps {m['training']['global_step']} "
          f"train {m['training']['train_time_s']:.0f}s total {m['training']['total_time_s']:.0f}s load {os.getloadavg()[0]:.1f} "
          f"curve {devs} sets {sets}", flush=True)

best, best_dev = None, -1.0
for name, _ in runs:
    f = root / name / "embed_kd_train.json"
    if f.exists():
        d = json.loads(f.read_text())["dev"]["metrics_final"]["dev_ndcg_at_10"]
        if d > best_dev:
            best, best_dev = name, d
print(f"best by dev: {best} ({best_dev:.4f})", flush=True)
if best:
    out = "eval/results/scifact-static"
    r = subprocess.run([".venv/bin/python", "scripts/bench_scifact_static.py", "--static", str(root / best),
                        "--out", out], capture_output=True, text=True)
    print(r.stdout[-6000:], r.stderr[-3000:], flush=True)
