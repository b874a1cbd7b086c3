"""The asymmetric model artifact: one sentence-transformers ``Router`` model — student queries, teacher documents.

An aligned student exists to encode queries against documents its teacher encoded. This module
packs the pair into the form sentence-transformers 6 has for exactly that: a ``Router`` model
(``Router.for_query_document``) whose ``query`` route is the student (with its projection) and
whose ``document`` route is the teacher. ``SentenceTransformer(DIR)`` loads it with no embed-kd
import and no ``trust_remote_code``; ``encode_query`` runs the student, ``encode_document`` (and
plain ``encode``: the default route) the teacher, so MTEB, sentence-transformers' evaluators and
vector-database integrations do the asymmetric thing on their own.

Written by ``embed-kd train`` beside a dense student (``OUTPUT/asym/``) and by
``embed-kd export asym --query-model S --doc-model T -o DIR`` (:func:`build_asym`). ``eval``,
``index build``, ``serve`` and ``eval --mteb`` take it as one model and split it back into its two
towers (:func:`split_routes`): documents by the document route, queries by the query route. The
document route is a plain stack of the teacher's modules, so its model fingerprint *is* the
teacher's, and the teacher's cached corpus embeddings are reused (no re-encode).

On-disk layout (schema ``embed-kd/asym@1``)::

    DIR/
      modules.json                       [{"idx": 0, "name": "0", "path": "",
                                           "type": "sentence_transformers.base.modules.router.Router"}]
      router_config.json                 {"types": {module id: class}, "structure": {"query": [ids],
                                          "document": [ids]}, "parameters": {"default_route": "document", …}}
      query_0_Transformer/ …             the query tower's modules in order (the student: Transformer or
      query_2_Dense/ query_3_Normalize/   StaticEmbedding, Pooling, its projection Dense, Normalize)
      document_0_Transformer/ …          the document tower's modules (the teacher)
      config_sentence_transformers.json  similarity function (the teacher's), prompts, versions
      embed_kd_asym.json                 the manifest below (what the towers are, what they cost)
      embed_kd_manifest.json             {"embedding_teacher": {"spec", "fingerprint"}}: the space the
                                         query tower was aligned to (read by serve/eval's alignment check)
      README.md                          model card: which tower is which, params/layers of each, usage

``embed_kd_asym.json``::

    {
      "schema": "embed-kd/asym@1",
      "query":    {"spec", "fingerprint", "dim", "max_seq_length", "params", "layers", "modules": [class]},
      "document": {"spec", "fingerprint", "dim", "max_seq_length", "params", "layers", "modules": [class]},
      "similarity_fn_name": "cosine" | "dot" | …,
      "versions": {...}, "created": ISO-8601 UTC
    }

``fingerprint`` of a route is :func:`embed_kd.models.fingerprint_model` of that tower alone — the
fingerprint of the model it was built from. A reader (:func:`split_routes` on a folder with this
manifest) checks both: a route whose weights no longer match its manifest is refused.
The folder is written into a temporary sibling, reloaded and checked there (both routes'
fingerprints), then renamed into place; an existing ``DIR`` is refused unless ``overwrite``.

>>> is_asym_folder("/nonexistent")
False
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from embed_kd.encode import embedding_dim
from embed_kd.errors import ArtifactError, EmbedKDError
from embed_kd.io import (Artifact, atomic_dir, atomic_write_json, atomic_write_text, check_writable, read_json,
                         refuse_existing, utc_now, versions)
from embed_kd.models import fingerprint_model, is_sparse_model, load_sentence_transformer, model_name
from embed_kd.presets import locate_model

logger = logging.getLogger(__name__)

SCHEMA = "embed-kd/asym@1"
MANIFEST = "embed_kd_asym.json"
TEACHER_MANIFEST = "embed_kd_manifest.json"  # read by embed_kd.students.alignment.declared_teacher_fingerprint
ROUTES = ("query", "document")
ROUTER_CONFIG = "router_config.json"


def _router_class():
    from sentence_transformers.sentence_transformer.modules import Router

    return Router


def is_asym_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a saved sentence-transformers model whose only module is a query/document Router."""
    folder = Path(path)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        router = json.loads((folder / ROUTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(modules, list) and len(modules) == 1 and str(modules[0].get("type", "")).endswith("Router")
            and isinstance(router, dict) and set(ROUTES) <= set(router.get("structure", {})))


def is_asym_model(model) -> bool:
    """True when ``model`` (a loaded SentenceTransformer) is one query/document Router."""
    try:
        modules = list(model.children())
    except AttributeError:
        return False
    return (len(modules) == 1 and isinstance(modules[0], _router_class())
            and set(ROUTES) <= set(modules[0].sub_modules))


def route_model(model, route: str):
    """A plain ``SentenceTransformer`` over one route's modules (shared, not copied) of an asym model.

    The route model's fingerprint is the fingerprint of the model the route was built from, so it
    finds that model's cache entries. ``embed_kd_spec`` stays the artifact's spec (reloading it
    and taking the same route gives the same model); ``embed_kd_route`` names the route.
    """
    from sentence_transformers import SentenceTransformer

    if route not in ROUTES:
        raise EmbedKDError(f"route {route!r}: expected one of {', '.join(ROUTES)}")
    router = next(iter(model.children()))
    view = SentenceTransformer(modules=list(router.sub_modules[route]), device=str(model.device),
                               similarity_fn_name=model.similarity_fn_name)
    prompt = (model.prompts or {}).get(route)
    if prompt:
        view.prompts = {route: prompt}
    for attr in ("embed_kd_spec",):
        if hasattr(model, attr):
            setattr(view, attr, getattr(model, attr))
    view.embed_kd_route = route  # type: ignore[attr-defined]
    return view


def split_routes(model):
    """``(query model, document model)``: the two towers of an asym model, else ``(model, model)``.

    A model loaded from a folder with ``embed_kd_asym.json`` has each route checked against the
    fingerprint recorded there.
    """
    if not is_asym_model(model):
        return model, model
    q, d = route_model(model, "query"), route_model(model, "document")
    _check_against_manifest(getattr(model, "embed_kd_spec", None), {"query": q, "document": d})
    return q, d


def query_route(model):
    """The model that encodes queries: an asym model's query route, any other model itself."""
    return split_routes(model)[0]


def document_route(model):
    """The model that encodes documents: an asym model's document route, any other model itself."""
    return split_routes(model)[1]


def _check_against_manifest(spec, routes: dict) -> None:
    if not spec:
        return
    try:
        folder = Path(locate_model(spec)[0])
    except EmbedKDError:
        return
    path = folder / MANIFEST
    if not path.is_file():
        return

    manifest = read_json(path, "asym model manifest")
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise ArtifactError(f"{path}: not an embed-kd asym manifest (schema {SCHEMA!r})")
    for route, m in routes.items():
        want = (manifest.get(route) or {}).get("fingerprint")
        got = fingerprint_model(m)
        if want != got:
            raise ArtifactError(f"{path}: the {route} route's weights have fingerprint {got}, the manifest says "
                                f"{want} (modified after export); rebuild it with embed-kd export asym")


def tower_info(model) -> dict:
    """What one tower is and costs: spec, fingerprint, dim, max length, parameters, transformer layers."""
    layers = None
    for module in model.children():
        cfg = getattr(getattr(module, "auto_model", None), "config", None)
        if cfg is not None:
            layers = getattr(cfg, "num_hidden_layers", None)
            break
    else:  # no transformer: a static (embedding-bag) tower
        layers = 0
    max_len = getattr(model, "max_seq_length", None)
    return {"spec": model_name(model), "fingerprint": fingerprint_model(model), "dim": embedding_dim(model),
            "max_seq_length": None if max_len == float("inf") else max_len, "params": int(sum(p.numel() for p in model.parameters())), "layers": layers,
            "modules": [type(m).__name__ for m in model.children()]}


def _as_model(model, what: str):
    if isinstance(model, (str, os.PathLike)):
        if is_sparse_model(model):
            raise EmbedKDError(f"{what} '{model}' is a sparse (SPLADE) model; an asym model joins two dense "
                               "embedding models")
        return load_sentence_transformer(model, device="cpu")
    return model


def build_asym(query_model, doc_model, output: str | os.PathLike, *, overwrite: bool = False,
               name: str | None = None) -> dict:
    """Write the Router model ``output`` from a query model (student) and a document model (teacher).

    Either may be a loaded ``SentenceTransformer`` or a spec (folder, hub id, preset); an asym
    model given as either contributes its matching route. Refuses towers of different embedding
    dimensions or similarity functions (one space, one score). Returns the ``embed_kd_asym.json``
    manifest. Atomic: the folder is complete and verified, or absent.
    """
    from sentence_transformers import SentenceTransformer

    output = Path(output)
    artifact = Artifact(SCHEMA, MANIFEST, "asym model")  # the ownership rule: --overwrite replaces only one of these
    refuse_existing(output, overwrite, artifact=artifact)
    check_writable(output)
    q = query_route(_as_model(query_model, "query model"))
    d = document_route(_as_model(doc_model, "doc model"))
    q_info, d_info = tower_info(q), tower_info(d)
    if q_info["dim"] != d_info["dim"]:
        raise EmbedKDError(f"the query model '{q_info['spec']}' makes {q_info['dim']}-dim vectors and the doc model "
                           f"'{d_info['spec']}' {d_info['dim']}-dim vectors: one asym model needs one embedding space")
    if q.similarity_fn_name != d.similarity_fn_name:
        raise EmbedKDError(f"the query model scores by {q.similarity_fn_name} and the doc model by "
                           f"{d.similarity_fn_name}: one asym model needs one similarity function")
    router = _router_class().for_query_document(list(q.children()), list(d.children()))
    prompts = {k: v for k, v in {"query": (q.prompts or {}).get("query"),
                                 "document": (d.prompts or {}).get("document")}.items() if v}
    model = SentenceTransformer(modules=[router], device=str(d.device), similarity_fn_name=d.similarity_fn_name,
                                prompts=prompts or None)
    manifest = {"schema": SCHEMA, "query": q_info, "document": d_info, "similarity_fn_name": d.similarity_fn_name,
                "versions": versions(), "created": utc_now()}
    with atomic_dir(output, overwrite=overwrite, artifact=artifact) as tmp:
        model.save(str(tmp))
        atomic_write_json(tmp / MANIFEST, manifest)
        atomic_write_json(tmp / TEACHER_MANIFEST, {"embedding_teacher": {"spec": d_info["spec"],
                                                                         "fingerprint": d_info["fingerprint"]}})
        atomic_write_text(tmp / "README.md", render_card(manifest, name=name or output.name))
        reloaded = SentenceTransformer(str(tmp), device="cpu")  # what a user loads, checked before the rename
        rq, rd = route_model(reloaded, "query"), route_model(reloaded, "document")
        for route, m, info in (("query", rq, q_info), ("document", rd, d_info)):
            if fingerprint_model(m) != info["fingerprint"]:
                raise ArtifactError(f"{output}: the saved {route} route does not reload to the model it was built "
                                    f"from ({fingerprint_model(m)} != {info['fingerprint']})")
    logger.info("wrote asym model %s: queries by '%s' (%s), documents by '%s' (%s)", output, q_info["spec"],
                q_info["fingerprint"], d_info["spec"], d_info["fingerprint"])
    return manifest


def _cost(info: dict) -> str:
    layers = "static (no transformer layers)" if info["layers"] == 0 else f"{info['layers']} transformer layers"
    return f"{info['params'] / 1e6:.2f}M parameters, {layers}, {info['dim']}-dim output"


def render_card(manifest: dict, *, name: str) -> str:
    """The ``README.md`` of an asym folder: which tower is which, what each costs, how to load it.

    >>> t = {"spec": "t", "fingerprint": "a" * 16, "dim": 4, "max_seq_length": 8, "params": 2_000_000,
    ...      "layers": 6, "modules": ["Transformer"]}
    >>> card = render_card({"query": {**t, "spec": "s", "params": 500_000, "layers": 3}, "document": t,
    ...                     "similarity_fn_name": "cosine"}, name="x")
    >>> "| query (`encode_query`) | `s` | 0.50M parameters, 3 transformer layers, 4-dim output |" in card
    True
    """
    q, d = manifest["query"], manifest["document"]
    ratio = d["params"] / q["params"] if q["params"] else float("nan")
    return "\n".join([
        "---", "library_name: sentence-transformers", "tags:", "- sentence-transformers", "- asymmetric",
        "- embed-kd", "pipeline_tag: sentence-similarity", "---", "",
        f"# {name}: asymmetric retrieval model (student queries × teacher documents)", "",
        "One sentence-transformers `Router` model with two towers in one embedding space: the *query* route is a "
        "small student distilled (by embed-kd) to encode queries into the space where the *document* route — its "
        "teacher — encodes documents. Encode the corpus once with the teacher; serve queries with the student.", "",
        "| route | model | cost | fingerprint |", "|---|---|---|---|",
        f"| query (`encode_query`) | `{q['spec']}` | {_cost(q)} | `{q['fingerprint']}` |",
        f"| document (`encode_document`, default) | `{d['spec']}` | {_cost(d)} | `{d['fingerprint']}` |", "",
        f"The query tower has {ratio:.1f}× fewer parameters than the document tower. Similarity: "
        f"`{manifest['similarity_fn_name']}`. Plain `encode` uses the document route.", "",
        "## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
        f'model = SentenceTransformer("{name}")  # no trust_remote_code, no embed-kd import',
        'doc_emb = model.encode_document(["Vitamin D improves bone density in older adults."])',
        'query_emb = model.encode_query(["does vitamin d help bones"])',
        "print(model.similarity(query_emb, doc_emb))", "```", "",
        "With embed-kd: `embed-kd eval --data scifact --model DIR`, `embed-kd index build --doc-model DIR`, "
        "`embed-kd serve --index IDX --query-model DIR` run asymmetrically (documents by the document route, "
        "queries by the query route); the document route has the teacher's fingerprint, so the teacher's cached "
        "corpus embeddings are reused.", "",
    ])
