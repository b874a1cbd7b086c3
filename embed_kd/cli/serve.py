"""``embed-kd serve``: search an index over HTTP, queries encoded by a (student) query model."""

from __future__ import annotations

import click

from embed_kd.cli.backend import backend_option
from embed_kd.cli.compress import compression_from_flags, compression_options
from embed_kd.cli.common import device_option, run_command, set_threads, setup_logging, verbosity_options


@click.command("serve")
@click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False),
              help="Index folder (embed-kd index build).")
@click.option("--query-model", help="The model that encodes queries (a student aligned to the index's doc model); "
                                    "default: the index's doc model.")
@click.option("--expect-teacher-fingerprint", help="Refuse to start unless the index's doc model has this "
                                                   "fingerprint (the teacher the query model was aligned to).")
@click.option("--allow-teacher-mismatch", is_flag=True,
              help="Serve even when the query model declares another embedding teacher than the index's doc "
                   "model (a warning instead of a refusal; results mix two embedding spaces).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--max-batch-size", default=32, show_default=True, type=click.IntRange(1),
              help="Most queries encoded together (micro-batching).")
@click.option("--max-wait-ms", default=2.0, show_default=True, type=click.FloatRange(0, 60_000),  # not inf/nan
              help="Longest wait for more queries before encoding a batch.")
@click.option("--max-k", default=1000, show_default=True, type=click.IntRange(1), help="Largest k a request may ask.")
@click.option("--max-query-chars", default=2000, show_default=True, type=click.IntRange(1),
              help="Longest query accepted (characters).")
@click.option("--max-queries", default=64, show_default=True, type=click.IntRange(1),
              help="Most queries in one request.")
@click.option("--threads", type=click.IntRange(1), help="torch CPU threads (default: torch's choice).")
@click.option("--no-verify", is_flag=True, help="Skip the index checksums at startup (large indexes).")
@click.option("--access-log", is_flag=True, help="Log every request (uvicorn access log).")
@compression_options
@backend_option
@device_option
@verbosity_options
@run_command
def serve_command(index_dir, query_model, expect_teacher_fingerprint, allow_teacher_mismatch, host, port,
                  max_batch_size, max_wait_ms, max_k, max_query_chars, max_queries, threads, no_verify, access_log, verbose, quiet, device=None,
                  truncate_dim=None, precision=None, rescore=None, backend="torch"):
    """Serve POST /search, GET /health and GET /info with uvicorn.

    \b
    embed-kd serve --index indexes/scifact-minilm --query-model runs/student --port 8000
    curl -s localhost:8000/search -H 'content-type: application/json' \\
         -d '{"query": "vitamin D and bone density", "k": 5}'
    """
    from embed_kd.serve.app import ServeSettings, create_app
    from embed_kd.serve.engine import SearchEngine
    from embed_kd.serve.runner import check_port, serve_forever

    setup_logging(verbose, quiet)
    set_threads(threads)
    from embed_kd.device import select_device
    select_device(device)  # --device / $EMBED_KD_DEVICE / auto; logged once
    check_port(host, port)  # fail in a second, not after loading the model
    engine = SearchEngine.load(index_dir, query_model, expect_teacher_fingerprint=expect_teacher_fingerprint,
                               verify=not no_verify, allow_teacher_mismatch=allow_teacher_mismatch,
                               compression=compression_from_flags(truncate_dim, precision, rescore), backend=backend)
    settings = ServeSettings(max_k=max_k, max_query_chars=max_query_chars, max_queries=max_queries,
                             max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)
    app = create_app(engine, settings)
    info = engine.info()
    click.echo(f"serving {info['index']['n']} docs of '{info['doc_model']['spec']}' with query model "
               f"'{info['query_model']['spec']}' (alignment: {engine.alignment}) on http://{host}:{port} "
               "— Ctrl-C to stop", err=True)
    serve_forever(app, host, port, access_log=access_log, log_level="info" if verbose else "warning")
