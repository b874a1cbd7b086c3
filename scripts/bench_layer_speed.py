"""Query-encoding speed of MiniLM layer cuts (1 to 6 layers): how fast can a k-of-6-layer student be?

The scifact-l3 benchmark measures its 3-layer student at 1.93-2.10x the teacher, depending on the
machine and its load. This script measures why: the same protocol (the 300 SciFact test queries,
batch 32, 1 torch thread, median of 3 alternating repetitions, ``embed_kd.encode.encode_texts``) for
cuts keeping 1..6 of MiniLM-L6's layers (speed depends on how many layers, not which), plus the
parts that do not shrink with the layer count: tokenisation alone, and the model with 0 layers
(tokenisation + embeddings + pooling + normalisation). Output: ``--out``.json and ``.md``::

    {"schema": "embed-kd/bench-layer-speed@1", "created", "machine": embed_kd.cpu.machine_info(threads=1),
     "n_queries", "batch_size", "repeats", "loadavg_before_after",
     "rows": [{"layers", "queries_per_s", "times_s": [3 runs], "speedup_vs_teacher"}],
     "tokenize_only_s", "zero_layer_s", "fixed_share_of_teacher"}

Heavy (2 min): ``flock /tmp/embed_kd_heavy.lock .venv/bin/python scripts/bench_layer_speed.py``
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="eval/results/speed/layer-cuts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    import torch

    from embed_kd.cpu import describe, machine_info
    from embed_kd.data import load_beir, resolve_dataset
    from embed_kd.encode import encode_texts
    from embed_kd.io import atomic_write_json, utc_now
    from embed_kd.models import load_sentence_transformer
    from embed_kd.students import cut_layers

    torch.set_num_threads(1)
    queries = list(load_beir(resolve_dataset("scifact"), "test").queries.values())
    teacher = load_sentence_transformer("minilm-l6")
    models = {k: (teacher if k == 6 else cut_layers(teacher, list(range(k)))) for k in range(1, 7)}
    zero = copy.deepcopy(teacher)  # tokenisation + embeddings + pooling + normalisation, no layer
    zero[0].auto_model.encoder.layer = torch.nn.ModuleList()
    zero[0].auto_model.config.num_hidden_layers = 0
    models = {0: zero, **models}
    load_before = os.getloadavg()
    encode_texts(teacher, queries[:64], batch_size=args.batch_size, role="query", show_progress=False)  # warm-up
    times: dict[int, list[float]] = {k: [] for k in models}
    tok: list[float] = []
    prep = getattr(teacher, "preprocess", None) or teacher.tokenize  # sentence-transformers 6 renamed it
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for i in range(0, len(queries), args.batch_size):
            prep(queries[i:i + args.batch_size])
        tok.append(time.perf_counter() - t0)
        for k, m in models.items():
            t0 = time.perf_counter()
            encode_texts(m, queries, batch_size=args.batch_size, role="query", show_progress=False)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [{"layers": k, "queries_per_s": len(queries) / med[k], "times_s": times[k],
             "speedup_vs_teacher": med[6] / med[k]} for k in range(1, 7)]
    out = {"schema": "embed-kd/bench-layer-speed@1", "created": utc_now(), "machine": machine_info(threads=1),
           "n_queries": len(queries), "batch_size": args.batch_size, "repeats": args.repeats,
           "loadavg_before_after": [list(load_before), list(os.getloadavg())], "rows": rows,
           "tokenize_only_s": statistics.median(tok), "zero_layer_s": med[0],
           "fixed_share_of_teacher": med[0] / med[6]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out + ".json", out)
    per_layer = (med[6] - med[0]) / 6
    lines = [f"# Query-encoding speed of MiniLM layer cuts ({out['created'][:10]})", "",
             f"`scripts/bench_layer_speed.py`: the {len(queries)} SciFact test queries, batch {args.batch_size}, "
             f"1 torch thread, median of {args.repeats} alternating repetitions (the scifact-l3 speed protocol). "
             f"Machine: {describe(out['machine'])}; load average before / after: "
             f"{load_before[0]:.2f} / {out['loadavg_before_after'][1][0]:.2f}.", "",
             "| layers kept (of 6) | queries/s | × the 6-layer teacher | median s |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layers']} | {r['queries_per_s']:.1f} | {r['speedup_vs_teacher']:.2f} | "
                     f"{statistics.median(r['times_s']):.3f} |")
    lines += ["", f"What does not shrink with the layers: tokenisation alone {out['tokenize_only_s']:.3f} s; the model "
              f"with 0 layers (tokenisation, embeddings, pooling, normalisation) {med[0]:.3f} s = "
              f"{100 * out['fixed_share_of_teacher']:.1f}% of the teacher's {med[6]:.3f} s; one layer ≈ "
              f"{per_layer:.3f} s. With that fixed part, k of 6 layers can reach at most "
              f"{med[6]:.3f} / ({med[0]:.3f} + k × {per_layer:.3f}): for k = 3, "
              f"{med[6] / (med[0] + 3 * per_layer):.2f}× (measured {med[6] / med[3]:.2f}×)."]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
