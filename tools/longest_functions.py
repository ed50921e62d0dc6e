"""The longest functions of fedgate's source folders, in lines:
``python tools/longest_functions.py [N]`` from the repository root. A measure, not a rule."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

FOLDERS = ("fedgate", "server", "clients", "strategies", "models")


def main() -> None:
    rows = []
    for folder in FOLDERS:
        for file in Path(folder).rglob("*.py"):
            if any(p.is_symlink() for p in (file, *file.parents)):
                continue
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    rows.append((length, node.name, f"{file}:{node.lineno}"))
    most = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for length, name, where in sorted(rows, reverse=True)[:most]:
        print(f"{length:4d}  {name}  {where}")


if __name__ == "__main__":
    main()
