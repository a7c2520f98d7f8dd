"""Count the import structure of emoctl: rooms, floors, arrows, upward arrows, circles, function-local imports.

``python -m emoctl_tests.harness.layering [REPO]`` prints the counts. The floors are the ``layers`` contract of
``[tool.importlinter]`` in pyproject.toml (what ``lint-imports`` checks), so the count and the check read one
order. A room is a package of emoctl (``emoctl.store``) or a top-level module (``emoctl.cli``); an upward arrow
is an import from a room on a lower floor to one on a higher floor; a circle is a set of modules that import
each other (directly or through a chain).
"""
from __future__ import annotations

import ast
import collections
import sys
import tomllib
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("emoctl", "data_modules")
LAZY_MARK = "# lazy:"


def declared_layers(repo: Path = REPO) -> list[list[str]]:
    """The layers contract of pyproject.toml, top to bottom, each floor a list of module names (the optional
    ones, written ``(name)``, without their parentheses); the bare ``emoctl`` package joins the bottom floor."""
    config = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    floors = [[name.strip().strip("()") for name in layer.replace(":", "|").split("|")] for layer in layers]
    floors[-1].append("emoctl")
    return floors


def room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def function_local_imports(repo: Path = REPO) -> list[tuple[Path, int, bool]]:
    """Every import of an emoctl or data_modules module (or a relative one) inside a function body, as
    (file, line, marked): ``marked`` when its line carries ``# lazy: <why>``."""
    found = []
    for top in SOURCES:
        for path in sorted((repo / top).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            lines = text.splitlines()
            for fn in ast.walk(ast.parse(text)):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom):
                        ours = bool(node.level) or (node.module or "").split(".")[0] in SOURCES
                    elif isinstance(node, ast.Import):
                        ours = any(alias.name.split(".")[0] in SOURCES for alias in node.names)
                    else:
                        continue
                    if ours:
                        found.append((path.relative_to(repo), node.lineno, LAZY_MARK in lines[node.lineno - 1]))
    # a nested function's imports are walked once per enclosing function: count each line once
    return sorted(set(found))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    repo = Path(args[0]).resolve() if args else REPO
    sys.path.insert(0, str(repo))
    floors = declared_layers(repo)
    graph = grimp.build_graph("emoctl")
    modules = sorted(graph.modules)
    level = {name: i for i, names in enumerate(floors) for name in names}
    arrows: collections.Counter[tuple[str, str]] = collections.Counter()
    for m in modules:
        for imported in graph.find_modules_directly_imported_by(m):
            if room(imported) != room(m):
                arrows[(room(m), room(imported))] += 1
    upward = sorted((a, b) for (a, b) in arrows if a in level and b in level and level[a] > level[b])
    unknown = sorted({r for pair in arrows for r in pair if r not in level})
    sccs = circles(graph)
    local = function_local_imports(repo)
    unmarked = [(p, n) for p, n, marked in local if not marked]
    rooms = sorted({room(m) for m in modules})
    print(f"modules {len(modules)}, rooms {len(rooms)}, floors {len(floors)}, arrows between rooms {len(arrows)}")
    print(f"upward arrows {len(upward)}: " + ", ".join(f"{a} -> {b}" for a, b in upward))
    print(f"rooms outside the declared layers: {unknown}")
    print(f"circles {len(sccs)}: " + "; ".join(" <-> ".join(c) for c in sccs))
    print(f"function-local imports of emoctl/data_modules modules {len(local)} "
          f"({len(local) - len(unmarked)} marked '{LAZY_MARK}', {len(unmarked)} not)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
