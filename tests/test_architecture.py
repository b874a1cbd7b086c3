"""The shape of the code: imports go one way (no cycle between modules or packages) and the CLI is thin.

The import graph is read from the source with :mod:`ast` — module-level *and* function-local
imports (a function-local import defers loading, it does not remove the dependency). A package is
``embed_kd.<name>`` (a subpackage or a top-level module); ``embed_kd`` itself is only ``__version__``
and the error type.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "embed_kd"

# Foundations: importable by every stage, importing no stage package themselves.
FOUNDATIONS = {"embed_kd", "embed_kd.errors", "embed_kd.io", "embed_kd.presets", "embed_kd.models",
               "embed_kd.model_kind", "embed_kd.device", "embed_kd.cpu", "embed_kd.numeric",
               "embed_kd.encode", "embed_kd.distributed"}
MAX_CLI_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str:
    """The embed_kd module ``name`` lives in (``embed_kd.a.b.func`` → ``embed_kd.a.b``)."""
    while name and name not in MODULES:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name


def _package_of_module(module: str, path: Path) -> str:
    """The package a relative import is taken from."""
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


def import_edges() -> dict[str, dict[str, int]]:
    """``{module: {imported embed_kd module: line}}`` over every import statement, at any depth."""
    edges: dict[str, dict[str, int]] = defaultdict(dict)
    for mod, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = _package_of_module(mod, path)
                    for _ in range(node.level - 1):
                        pkg = pkg.rsplit(".", 1)[0]
                    base = f"{pkg}.{base}" if base else pkg
                if base == "embed_kd" or base.startswith("embed_kd."):
                    targets = [_resolve(f"{base}.{a.name}") or _resolve(base) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [_resolve(a.name) for a in node.names if a.name.split(".")[0] == "embed_kd"]
            for target in targets:
                if target and target != mod:
                    edges[mod].setdefault(target, node.lineno)
    return edges


def package(module: str) -> str:
    """``embed_kd.training.run`` → ``embed_kd.training``; ``embed_kd.io`` → ``embed_kd.io``."""
    return ".".join(module.split(".")[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(set(graph) | {t for ts in graph.values() for t in ts}):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _describe(comp: list[str], edges: dict[str, dict[str, int]], key=lambda m: m) -> str:
    members = set(comp)
    lines = [f"{MODULES[a].relative_to(ROOT.parent)}:{line} imports {b}"
             for a, targets in sorted(edges.items()) for b, line in sorted(targets.items())
             if key(a) in members and key(b) in members and key(a) != key(b)]
    return " <-> ".join(comp) + "\n  " + "\n  ".join(lines)


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_walk_sees_function_local_imports():
    # embed_kd.models imports presets at module level and model_kind only inside functions
    edges = import_edges()
    assert "embed_kd.presets" in edges["embed_kd.models"]
    assert "embed_kd.model_kind" in edges["embed_kd.models"]


def test_no_import_cycle_between_modules():
    edges = import_edges()
    found = cycles({a: set(ts) for a, ts in edges.items()})
    assert not found, "import cycles between modules:\n" + "\n".join(_describe(c, edges) for c in found)


def test_no_import_cycle_between_packages():
    edges = import_edges()
    graph: dict[str, set[str]] = defaultdict(set)
    for a, targets in edges.items():
        for b in targets:
            if package(a) != package(b):
                graph[package(a)].add(package(b))
    found = cycles(graph)
    assert not found, "import cycles between packages:\n" + "\n".join(
        _describe(c, edges, key=package) for c in found)


def test_foundations_import_no_stage():
    edges = import_edges()
    bad = [f"{MODULES[a].relative_to(ROOT.parent)}:{line} imports {b}"
           for a, targets in sorted(edges.items()) if package(a) in FOUNDATIONS
           for b, line in sorted(targets.items()) if package(b) not in FOUNDATIONS]
    assert not bad, "foundation modules importing a stage:\n" + "\n".join(bad)


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("path", sorted((ROOT / "cli").glob("*.py")), ids=lambda p: p.name)
def test_cli_functions_are_short(path):
    """A command parses flags and calls one library function: no function needs more than 80
    lines, ``def`` to its last line (its click option decorators are not counted)."""
    long = []
    for fn in _functions(ast.parse(path.read_text(encoding="utf-8"))):
        n = fn.end_lineno - fn.lineno + 1
        if n > MAX_CLI_FUNCTION_LINES:
            long.append(f"{path.name}:{fn.lineno} {fn.name} is {n} lines")
    assert not long, "\n".join(long)
