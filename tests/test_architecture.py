"""The module graph of tasks/ and flows/, read from the source: no import cycles, and a
function-local import of a project module only where it is listed below with its reason.

A cycle hidden by a local import works until someone moves the import; so the graph counts
every import, local ones too, and also the package `__init__` Python runs first when a
module of another package is imported (importing `tasks.ingest.common` runs
`tasks/ingest/__init__.py`)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (importing module, imported module) pairs allowed inside a function, and why.
LOCAL_IMPORTS = {
    # the CLI answers `--help`, `query` and `server status` without importing Prefect or torch
    **{("flows.cli", m): "CLI start-up" for m in (
        "flows.pipeline", "flows.prefect_server", "flows.steps", "flows.logs", "tasks.demo_data",
        "tasks.recipe", "tasks.catalog", "tasks.evaluate", "tasks.errors")},
    # a data-only run (`--until mix`) and the shard workers never import torch and transformers
    ("flows.tasks", "tasks.train_sft.launch"): "torch",
    ("flows.tasks", "tasks.evaluate"): "torch",
    ("flows.pipeline", "tasks.evaluate"): "torch",
    # tasks.evaluate's package imports the evaluate step (torch): reports import it only when a run evaluated
    ("flows.report", "tasks.evaluate.report"): "torch",
    ("tasks.html_report", "tasks.evaluate.report"): "torch",
    # the compiled dedup kernels: built on first use or at install, not at import
    **{("tasks.dedup.aot", m): "compiled kernels" for m in ("tasks.dedup.kernels", "tasks.step")},
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted([*ROOT.glob("tasks/**/*.py"), *ROOT.glob("flows/**/*.py")]):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _targets(node, name: str, path: Path, modules: dict) -> list[tuple[str, bool]]:
    """The project modules an import statement runs: (module, named by the statement)."""
    if isinstance(node, ast.Import):
        found = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = _package_of(name, path).split(".")
            base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
        found = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = []
    for target in found:
        if target not in modules:
            continue
        parts = target.split(".")
        # packages Python initialises first, except the importer's own (already running)
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            runs_code = parent in modules and modules[parent].stat().st_size > 0
            if runs_code and not (name == parent or name.startswith(parent + ".")):
                out.append((parent, False))
        out.append((target, True))
    return [(t, named) for t, named in dict.fromkeys(out) if t != name]


def _graph():
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    local: list[tuple[str, str, int]] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for n in tree.body}
        top |= {id(n) for s in tree.body if isinstance(s, (ast.If, ast.Try)) for n in ast.walk(s)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, named in _targets(node, name, path, modules):
                edges[name].add(target)
                if named and id(node) not in top:
                    local.append((name, target, node.lineno))
    return edges, local


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles_among_project_modules():
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_function_local_project_imports_are_only_the_listed_ones():
    _, local = _graph()
    unlisted = sorted({f"{m} -> {t} (line {line})" for m, t, line in local if (m, t) not in LOCAL_IMPORTS})
    assert unlisted == [], "import these at the top, or list them in LOCAL_IMPORTS with the reason"
