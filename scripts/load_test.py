#!/usr/bin/env python
"""Load-test `embed-kd serve` on loopback: QPS and p50/p99 latency at several client concurrencies.

Starts `embed-kd serve` (a real uvicorn process) on 127.0.0.1 for each query model, sends SciFact
queries (one query per request, `k` documents back) from N concurrent clients, and stops by itself:
each level ends after `--requests` requests or `--max-seconds`, whichever comes first. Writes the
measurements as JSON and prints a markdown table.

    # the teacher and a 3-layer cut of it (layers 0,2,4) as query models, documents by the teacher
    flock /tmp/embed_kd_heavy.lock python scripts/load_test.py --index /tmp/idx-minilm \\
        --model teacher=minilm-l6 --model student=cut:minilm-l6:0,2,4 -o /tmp/serve-load.json

`--model LABEL=SPEC`: SPEC is a model spec (path / preset), or `cut:SPEC:0,2,4` for a layer cut of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve_common import ServerProcess, layer_cut  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(values)
    rank = max(1, min(len(s), int(-(-q * len(s) // 100))))
    return s[rank - 1]


class RawConnection:
    """One keep-alive HTTP/1.1 connection written with asyncio streams: the lightest client there is,
    so that at high concurrency the load generator (sharing the server's cores) costs as little as
    possible. It speaks only what this benchmark needs: POST a JSON body, read a Content-Length reply."""

    def __init__(self, url: str):
        host_port = url.split("://", 1)[1].rstrip("/")
        self.host, _, port = host_port.partition(":")
        self.port = int(port or 80)
        self.reader = self.writer = None

    async def post_json(self, path: str, payload: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(payload).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        length = {k.strip().lower(): v.strip() for k, v in headers.items()}.get("content-length")
        if length is None:
            raise RuntimeError("reply without Content-Length")
        return status, await self.reader.readexactly(int(length))

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def run_level_raw(url: str, queries: list[str], concurrency: int, n_requests: int, max_seconds: float,
                        k: int) -> dict:
    """:func:`run_level` with one :class:`RawConnection` per client instead of an httpx pool."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n_requests))
    conns = [RawConnection(url) for _ in range(concurrency)]
    start = time.perf_counter()
    deadline = start + max_seconds

    async def worker(conn: RawConnection) -> None:
        for i in counter:
            if time.perf_counter() > deadline:
                return
            t = time.perf_counter()
            try:
                status, body = await conn.post_json("/search", {"query": queries[i % len(queries)], "k": k})
                ok = status == 200 and len(json.loads(body)["results"][0]["ids"]) == k
                if not ok:
                    errors.append(f"HTTP {status}: {body[:200]!r}")
                    continue
            except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as exc:
                errors.append(f"{exc.__class__.__name__}: {exc}")
                await conn.close()
                conn.writer = None
                continue
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        await c.close()
    return _level_result(concurrency, latencies, errors, elapsed, n_requests)


def _level_result(concurrency: int, latencies: list[float], errors: list[str], elapsed: float, n_requests: int) -> dict:
    return {
        "concurrency": concurrency, "requests": len(latencies) + len(errors), "ok": len(latencies),
        "errors": len(errors), "error_samples": errors[:5], "elapsed_s": elapsed,
        "qps": len(latencies) / elapsed if elapsed > 0 else None,
        "p50_ms": percentile(latencies, 50) * 1000 if latencies else None,
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else None,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else None,
        "stopped_by": "time" if len(latencies) + len(errors) < n_requests else "count",
    }


async def run_level(url: str, queries: list[str], concurrency: int, n_requests: int, max_seconds: float, k: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n_requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        deadline = start + max_seconds

        async def worker() -> None:
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                t = time.perf_counter()
                try:
                    r = await client.post("/search", json={"query": queries[i % len(queries)], "k": k})
                    ok = r.status_code == 200 and len(r.json()["results"][0]["ids"]) == k
                    if not ok:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                        continue
                except httpx.HTTPError as exc:
                    errors.append(f"{exc.__class__.__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return _level_result(concurrency, latencies, errors, elapsed, n_requests)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True, help="index folder (embed-kd index build)")
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=SPEC",
                    help="query model to serve; repeat for a side-by-side run (cut:SPEC:0,2,4 = layer cut)")
    ap.add_argument("--data", default="scifact", help="BEIR dataset whose queries are sent")
    ap.add_argument("--split", default="test")
    ap.add_argument("--concurrency", default="1,8,50", help="comma-separated client counts")
    ap.add_argument("--requests", type=int, default=400, help="requests per level (after warm-up)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time limit per level")
    ap.add_argument("--warmup", type=int, default=20, help="unmeasured requests before each model's levels")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra flag for embed-kd serve (repeatable)")
    ap.add_argument("--client", choices=("httpx", "raw"), default="httpx",
                    help="load generator: an httpx connection pool, or one raw asyncio HTTP/1.1 keep-alive "
                         "connection per client (lighter: the client shares the server's cores)")
    ap.add_argument("-o", "--output", help="write the measurements as JSON here")
    args = ap.parse_args()

    from embed_kd.data import load_beir, resolve_dataset
    from embed_kd.serve.runner import free_port

    ds = load_beir(resolve_dataset(args.data), args.split)
    queries = list(ds.queries.values())
    levels = [int(c) for c in args.concurrency.split(",")]
    runs = []
    for item in args.model:
        label, _, spec = item.partition("=")
        source = spec
        if spec.startswith("cut:"):
            _, base, layers = spec.split(":")
            spec = layer_cut(base, layers)
        port = args.port or free_port()
        t = time.perf_counter()
        with ServerProcess(args.index, spec, port, args.serve_arg) as url:
            startup_s = time.perf_counter() - t
            info = httpx.get(f"{url}/info").json()
            for i in range(args.warmup):
                httpx.post(f"{url}/search", json={"query": queries[i % len(queries)], "k": args.k}, timeout=60)
            results = []
            for c in levels:
                before = httpx.get(f"{url}/info").json()["batching"]
                load0 = os.getloadavg()[0]
                level = run_level_raw if args.client == "raw" else run_level
                r = asyncio.run(level(url, queries, c, args.requests, args.max_seconds, args.k))
                after = httpx.get(f"{url}/info").json()["batching"]
                batches = after["batches"] - before["batches"]
                r["mean_batch"] = (after["items"] - before["items"]) / batches if batches else None
                r["loadavg_1m_before"] = load0
                r["loadavg_1m_after"] = os.getloadavg()[0]
                results.append(r)
                print(f"{label:>8} c={c:<3} qps={r['qps']:.1f} p50={r['p50_ms']:.1f}ms p99={r['p99_ms']:.1f}ms "
                      f"errors={r['errors']} mean_batch={r['mean_batch'] or 0:.1f} ({r['requests']} req, "
                      f"{r['elapsed_s']:.1f}s, load {r['loadavg_1m_after']:.1f})", file=sys.stderr, flush=True)
        runs.append({"label": label, "spec": source, "query_model": info["query_model"],
                     "doc_model": info["doc_model"], "alignment": info["alignment"], "startup_s": startup_s, "levels": results})

    env = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "loadavg_end": os.getloadavg(), "k": args.k, "requests_per_level": args.requests,
           "max_seconds_per_level": args.max_seconds, "data": f"{args.data}/{args.split}", "client": args.client,
           "n_queries": len(queries), "index": args.index, "serve_args": args.serve_arg,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = {"env": env, "runs": runs}
    print("| query model | clients | requests | QPS | p50 ms | p99 ms | errors | mean batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        for r in run["levels"]:
            print(f"| {run['label']} | {r['concurrency']} | {r['requests']} | {r['qps']:.1f} | {r['p50_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {r['errors']} | {r['mean_batch'] or 0:.1f} |")
    if args.output:
        from embed_kd.cpu import machine_info  # CPU, flags, threads, load average, commit

        out["machine"] = machine_info()
        Path(args.output).write_text(json.dumps(out, indent=2))
    return 1 if any(r["errors"] for run in runs for r in run["levels"]) else 0


if __name__ == "__main__":
    sys.exit(main())
