"""The package's import graph has no circles (issue 15): every stage imports only the ones below it.

Every import counts, module-level or inside a function (a lazy import is still a dependency). The package's
`__init__` is left out: it re-exports the public names and is not a stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "symgrad"


def import_graph(root: Path) -> dict[str, set[str]]:
    pkg = root.name
    mods: dict[str, Path] = {}
    for f in root.rglob("*.py"):
        name = ".".join(f.relative_to(root.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = m.split(".") if is_pkg else m.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and t != pkg:
                    edges[m].add(t)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
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
                    found.append(sorted(comp))
    return found


def test_the_checker_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circles():
    edges = import_graph(PACKAGE)
    assert len(edges) > 20
    found = circles(edges)
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


# The staged layout (docs/architecture.md): a module may import its own stage and the stages below, never above.
# Backends and display sit side by side (neither imports the other); `checks` runs generated modules, so it sits
# above the runtime. Top-level leaf modules (errors, artifacts) are rank 0.
STAGES = {
    "errors": 0,
    "artifacts": 0,
    "lang": 1,
    "frontend": 2,
    "ir": 3,
    "display": 4,
    "backends": 4,
    "runtime": 5,
    "checks": 6,
    "cli": 7,
    "__main__": 8,
    "schedules": 8,  # `from symgrad.schedules import ...`: an alias of runtime.schedules, above it like __main__
}


def stage_of(module: str) -> str:
    return module.split(".")[1]


def test_every_module_lives_in_a_known_stage():
    unknown = sorted({stage_of(m) for m in import_graph(PACKAGE) if m != "symgrad"} - set(STAGES))
    assert not unknown, f"modules outside the staged layout (add them to a stage): {unknown}"


def test_imports_flow_down_the_stages():
    upward = sorted(
        f"{m} -> {t}"
        for m, ts in import_graph(PACKAGE).items()
        if m != "symgrad"
        for t in ts
        if STAGES[stage_of(t)] > STAGES[stage_of(m)]
        or (STAGES[stage_of(t)] == STAGES[stage_of(m)] and stage_of(t) != stage_of(m))
    )
    assert not upward, "imports against the stage order: " + "; ".join(upward)
