"""`embed-kd serve`: a real uvicorn server on loopback, queried over HTTP (good and bad requests)."""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from embed_kd.cli import main
from embed_kd.errors import EmbedKDError
from embed_kd.serve.app import ServeSettings, create_app
from embed_kd.serve.batching import MicroBatcher
from embed_kd.serve.client import AsyncSearchClient, SearchClient, SearchError
from embed_kd.serve.engine import SearchEngine
from embed_kd.serve.runner import BackgroundServer, free_port

SETTINGS = ServeSettings(max_k=20, max_query_chars=100, max_queries=4, max_body_bytes=4096, max_wait_ms=5)
QUERIES = ["cat purr kitten", "ocean wave tide", "gene dna protein", "rain storm cloud", "dog bark leash",
           "solar light heat"]


@pytest.fixture(scope="module")
def index_dir(tiny_beir, tiny_model, tmp_path_factory):
    from embed_kd.data import load_corpus
    from embed_kd.index.cache import EmbeddingCache
    from embed_kd.index.store import build_index
    from embed_kd.models import load_sentence_transformer

    out = tmp_path_factory.mktemp("serve") / "idx"
    build_index(out, load_corpus(tiny_beir / "corpus.jsonl"), load_sentence_transformer(str(tiny_model)),
                cache=EmbeddingCache(enabled=False), show_progress=False)
    return out


@pytest.fixture(scope="module")
def server(index_dir, tiny_model_b):
    """Asymmetric: documents by tiny_model, queries by tiny_model_b (same dim, declares no teacher)."""
    engine = SearchEngine.load(index_dir, str(tiny_model_b))
    with BackgroundServer(create_app(engine, SETTINGS)) as url:
        yield url, engine


def _direct(engine, queries, k):
    """What the server should answer: query model → normalised vectors → FAISS on the persisted index."""
    from embed_kd.encode import encode_texts
    from embed_kd.index.store import open_index

    emb = encode_texts(engine.model, queries, normalize=True, role="query", show_progress=False)
    return [(ids, scores) for ids, scores, _ in open_index(engine.index.path).search(emb, k)]


def test_search_over_http_matches_direct_search(server):
    url, engine = server
    expected = _direct(engine, QUERIES[:4], 5)
    with SearchClient(url) as c:
        one = c.search(QUERIES[0], k=5)
        many = c.search(QUERIES[:4], k=5)
    assert set(one) == {"ids", "scores"} and len(one["ids"]) == 5
    assert one["ids"] == expected[0][0] and one["scores"] == pytest.approx(expected[0][1], abs=1e-5)
    assert [r["ids"] for r in many] == [ids for ids, _ in expected]
    for r, (_, scores) in zip(many, expected):
        assert r["scores"] == pytest.approx(scores, abs=1e-5) and r["scores"] == sorted(r["scores"], reverse=True)


def test_return_text_and_defaults(server, tiny_beir):
    from embed_kd.data import load_corpus

    url, _ = server
    corpus = load_corpus(tiny_beir / "corpus.jsonl")
    resp = httpx.post(f"{url}/search", json={"query": "kitten", "return_text": True})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["k"] == 10 and len(body["results"]) == 1 and body["took_ms"] >= 0
    hit = body["results"][0]
    assert len(hit["ids"]) == len(hit["texts"]) == 10
    for doc_id, text in zip(hit["ids"], hit["texts"]):
        assert text == f"{corpus[doc_id]['title']} {corpus[doc_id]['text']}"


def test_health_and_info(server, tiny_model, tiny_model_b):
    url, engine = server
    with SearchClient(url) as c:
        assert c.health() == {"status": "ok", "n_docs": 30}
        info = c.info()
    assert info["index"]["n"] == 30 and info["index"]["dim"] == 32 and info["index"]["kind"] == "flat"
    assert info["doc_model"]["spec"] == str(tiny_model) and info["query_model"]["spec"] == str(tiny_model_b)
    assert info["query_model"]["fingerprint"] != info["doc_model"]["fingerprint"]
    assert info["alignment"] == "unverified"
    assert info["limits"]["max_k_effective"] == 20 and info["batching"]["max_batch_size"] == 32


BAD = [
    ({"query": ""}, "query: query is empty"),
    ({"query": "   "}, "query: query is empty"),
    ({"query": "x" * 101}, "101 characters long; the limit is 100"),
    ({"query": []}, "query list is empty"),
    ({"query": ["a", "b", "c", "d", "e"]}, "5 queries in one request; the limit is 4"),
    ({"query": ["ok", ""]}, "query[1] is empty"),
    ({"query": ["ok", 7]}, "query[1] must be a string, got number 7"),
    ({"query": 5}, "query must be a string or a list of strings, got number 5"),
    ({"query": None}, "got null"),
    ({"query": {"text": "x"}}, "got object"),
    ({}, "query: Field required"),
    ({"query": "x", "k": 0}, "k must be between 1 and 20"),
    ({"query": "x", "k": 21}, "k must be between 1 and 20 (the index holds 30 documents"),
    ({"query": "x", "k": -3}, "k must be between 1 and 20"),
    ({"query": "x", "k": "5"}, "k: Input should be a valid integer, got string '5'"),
    ({"query": "x", "k": 2.5}, "k: Input should be a valid integer"),
    ({"query": "x", "k": True}, "k: Input should be a valid integer"),
    ({"query": "x", "return_text": "yes"}, "return_text: Input should be a valid boolean"),
    ({"query": "x", "return_text": 1}, "return_text: Input should be a valid boolean"),
    ({"query": "x", "top_k": 5}, "top_k: Extra inputs are not permitted"),
    ([{"query": "x"}], "body: Input should be a valid dictionary"),
]


@pytest.mark.parametrize("body,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_are_422_with_a_clear_message(server, body, message):
    url, _ = server
    resp = httpx.post(f"{url}/search", json=body)
    assert resp.status_code == 422, resp.text
    payload = resp.json()
    assert payload["error"].startswith("invalid request: ") and message in payload["error"], payload
    assert payload["problems"] and all({"field", "message", "type"} <= set(p) for p in payload["problems"])


def test_malformed_oversized_and_misrouted_requests_are_4xx(server):
    url, _ = server
    r = httpx.post(f"{url}/search", content=b'{"query": "x",', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]
    r = httpx.post(f"{url}/search", content=b'{"query": "x"}', headers={"content-type": "text/plain"})
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["error"]
    r = httpx.post(f"{url}/search", json={"query": "x" * 5000})
    assert r.status_code == 413 and "the limit is 4096 bytes" in r.json()["error"]
    assert httpx.get(f"{url}/search").status_code == 405
    r = httpx.get(f"{url}/nope")
    assert r.status_code == 404 and r.json()["error"] == "Not Found"
    # and the server still answers normally afterwards
    assert httpx.post(f"{url}/search", json={"query": "cat", "k": 1}).status_code == 200


def test_concurrent_clients_each_get_their_own_results(server):
    url, engine = server
    queries = [f"{q} {i}" for i in range(5) for q in QUERIES]  # 30 distinct queries
    expected = _direct(engine, queries, 3)
    before = httpx.get(f"{url}/info").json()["batching"]

    async def run():
        async with AsyncSearchClient(url) as c:
            return await asyncio.gather(*(c.search(q, k=3) for q in queries))

    got = asyncio.run(run())
    assert [r["ids"] for r in got] == [ids for ids, _ in expected]
    for r, (_, scores) in zip(got, expected):
        assert r["scores"] == pytest.approx(scores, abs=1e-5)
    after = httpx.get(f"{url}/info").json()["batching"]
    assert after["requests"] - before["requests"] == 30 and after["items"] - before["items"] == 30
    assert after["errors"] == 0


def test_client_raises_search_error_with_status_and_message(server):
    url, _ = server
    with SearchClient(url) as c:
        with pytest.raises(SearchError, match="HTTP 422: invalid request: k: k must be between") as exc:
            c.search("cat", k=999)
    assert exc.value.status == 422 and exc.value.payload["problems"][0]["field"] == "k"
    with SearchClient(f"http://127.0.0.1:{free_port()}", timeout=2) as c:
        with pytest.raises(SearchError, match="cannot reach the server") as exc:
            c.health()
    assert exc.value.status is None


def test_micro_batcher_collects_requests_that_wait_during_a_batch():
    gate = threading.Event()
    sizes = []

    def process(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            gate.wait(5)  # the first batch is "encoding" while the others arrive
        if "boom" in items:
            raise ValueError("bad item")
        return [x.upper() for x in items]

    async def run():
        b = MicroBatcher(process, max_batch_size=8, max_wait_ms=0)
        await b.start()
        first = asyncio.create_task(b.submit(["a"]))
        while not sizes:
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(b.submit([f"x{i}", f"y{i}"])) for i in range(6)]
        await asyncio.sleep(0.05)
        gate.set()
        outs = [await first] + [await t for t in rest]
        with pytest.raises(ValueError, match="bad item"):
            await b.submit(["boom"])
        after = await b.submit(["ok"])  # the worker survives a failed batch
        await b.stop()
        return outs, after, b.stats

    outs, after, stats = asyncio.run(run())
    assert outs[0] == ["A"] and outs[1:] == [[f"X{i}", f"Y{i}"] for i in range(6)]
    # 12 waiting items, at most 8 a batch, requests never split: 8 + 4
    assert sizes[:3] == [1, 8, 4] and after == ["OK"]
    assert stats.errors == 1 and stats.largest_batch == 8 and stats.requests == 8


def _fake_student(src, dst, manifest_name, manifest):
    shutil.copytree(src, dst)
    (dst / manifest_name).write_text(json.dumps(manifest))
    return dst


def test_startup_refuses_a_query_model_from_another_space(index_dir, tiny_model, tiny_model_b, tiny_model_wide,
                                                         tmp_path):
    from embed_kd.index.store import read_manifest

    teacher_fp = read_manifest(index_dir)["doc_model"]["fingerprint"]
    with pytest.raises(EmbedKDError, match="makes 48-dim vectors but the index holds 32-dim vectors"):
        SearchEngine.load(index_dir, str(tiny_model_wide))
    other = _fake_student(tiny_model_b, tmp_path / "s1", "embed_kd_manifest.json",
                          {"embedding_teacher": {"fingerprint": "0123456789abcdef"}})
    with pytest.raises(EmbedKDError, match="aligned to a teacher with fingerprint 0123456789abcdef .*embed_kd_manifest"):
        SearchEngine.load(index_dir, str(other))
    ok = _fake_student(tiny_model_b, tmp_path / "s2", "embed_kd_train.json",
                       {"schema": "embed-kd/train-run@1", "teacher": {"spec": "t", "fingerprint": teacher_fp}})
    assert SearchEngine.load(index_dir, str(ok)).alignment == "declared"
    with pytest.raises(EmbedKDError, match="--expect-teacher-fingerprint"):
        SearchEngine.load(index_dir, str(tiny_model_b), expect_teacher_fingerprint="fedcba9876543210")
    with pytest.raises(EmbedKDError, match="expected 16 hex digits"):
        SearchEngine.load(index_dir, str(tiny_model_b), expect_teacher_fingerprint="nope")
    assert SearchEngine.load(index_dir, str(tiny_model_b), expect_teacher_fingerprint=teacher_fp).alignment == "declared"
    assert SearchEngine.load(index_dir).alignment == "same model"  # default: the doc model itself


def test_cli_serve_refuses_clearly(index_dir, tiny_model_wide):
    res = CliRunner().invoke(main, ["serve", "--index", str(index_dir), "--query-model", str(tiny_model_wide),
                                    "--port", str(free_port()), "-q"])
    assert res.exit_code == 2 and res.output.startswith("Error: query model") and "Traceback" not in res.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        res = CliRunner().invoke(main, ["serve", "--index", str(index_dir), "--port", str(busy.getsockname()[1])])
    assert res.exit_code == 2 and "cannot listen there" in res.output
    res = CliRunner().invoke(main, ["serve", "--index", str(index_dir.parent / "missing")])
    assert res.exit_code == 2 and "index folder not found" in res.output


def test_cli_serve_subprocess_end_to_end(index_dir, tiny_model_b):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "embed_kd", "serve", "--index", str(index_dir), "--query-model",
                             str(tiny_model_b), "--port", str(port), "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        with SearchClient(url) as c:
            res = c.search(["cat purr", "ocean tide"], k=4, return_text=True)
            assert [len(r["ids"]) for r in res] == [4, 4] and all(len(r["texts"]) == 4 for r in res)
            with pytest.raises(SearchError) as exc:
                c.search("")
            assert exc.value.status == 422
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and f"on http://127.0.0.1:{port}" in err


def test_serving_a_large_k_and_many_queries_uses_one_batch(server):
    """A request with several queries is encoded in one call, and k up to the limit works."""
    url, engine = server
    with SearchClient(url) as c:
        res = c.search(QUERIES[:4], k=20)
    assert [len(r["ids"]) for r in res] == [20] * 4
    assert all(len(set(r["ids"])) == 20 for r in res)
    emb = engine.encode(QUERIES[:4])
    assert emb.shape == (4, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_micro_batcher_waits_only_for_announced_arrivals():
    """With arrivals announced (as the app does), a lone request is not held for the gathering
    window, while a request that has arrived but not yet submitted is waited for."""
    sizes = []

    def process(items):
        sizes.append(len(items))
        return [x * 2 for x in items]

    async def run():
        b = MicroBatcher(process, max_batch_size=8, max_wait_ms=30_000)
        await b.start()
        lone = b.announce()
        t = time.perf_counter()
        assert await b.submit([1], lone) == [2]
        lone_s = time.perf_counter() - t
        first, second = b.announce(), b.announce()  # two requests inside the server

        async def late():
            await asyncio.sleep(0.2)  # still being read/validated when the first one submits
            return await b.submit([3], second)

        outs = await asyncio.gather(b.submit([1], first), late())
        refused = b.announce()
        b.withdraw(refused)  # refused before submitting: nobody waits for it
        t = time.perf_counter()
        assert await b.submit([5], b.announce()) == [10]
        after_withdraw_s = time.perf_counter() - t
        await b.stop()
        return lone_s, outs, after_withdraw_s

    lone_s, outs, after_withdraw_s = asyncio.run(run())
    assert lone_s < 15 and after_withdraw_s < 15  # far below the 30 s window: no gathering wait
    assert outs == [[2], [6]] and sizes == [1, 2, 1]  # the late arrival joined the first one's batch
