"""Count import cycles among fedgate's modules: ``python tools/import_cycles.py [ROOT]``.

Reads every source file's AST (imports anywhere, function-level included) and prints the
strongly connected components of more than one module, at module and at package level.
``lint-imports`` forbids cycles; this counts them, also in an old checkout without contracts.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

FOLDERS = {
    "fedgate": "fedgate",
    "server": "fedgate.server",
    "clients": "fedgate.clients",
    "strategies": "fedgate.strategies",
    "models": "fedgate.models",
}
Graph = dict[str, set[str]]


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for the source folders (links to other folders skipped)."""
    found: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        for file in (root / folder).rglob("*.py"):
            rel = file.relative_to(root / folder)
            if any((root / folder / p).is_symlink() for p in rel.parents if p != Path(".")):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = file
    return found


def import_graph(mods: dict[str, Path]) -> Graph:
    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {m: set() for m in mods}
    for name, file in mods.items():
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(file.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for target in targets:
                hit = known(target)
                if hit and hit != name:
                    graph[name].add(hit)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            out.append(component)

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return [sorted(c) for c in out if len(c) > 1]


def package_graph(graph: Graph, mods: dict[str, Path]) -> Graph:
    def package(m: str) -> str:
        return m if mods[m].name == "__init__.py" else m.rpartition(".")[0]

    packages: Graph = {package(m): set() for m in graph}
    for m, targets in graph.items():
        a = package(m)
        for b in map(package, targets):
            if b != a and not b.startswith(a + ".") and not a.startswith(b + "."):
                packages[a].add(b)
    return packages


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    mods = modules(root)
    graph = import_graph(mods)
    by_module, by_package = cycles(graph), cycles(package_graph(graph, mods))
    print(f"{len(mods)} modules; {len(by_module)} module cycles; {len(by_package)} package cycles")
    for kind, found in (("module", by_module), ("package", by_package)):
        for cycle in found:
            print(f"  {kind} cycle: {' <-> '.join(cycle)}")


if __name__ == "__main__":
    main()
