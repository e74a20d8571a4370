"""The import graph of the repo's packages, read with ast, has no import cycle, no upward import (layers,
top to bottom: runner, tasks, methods, models, kernels; a module imports its own package or those below
it), no private name imported from another module, and methods/base.py never imports methods/module.py.
Every import counts: module level, inside a function, under `if TYPE_CHECKING:`. The checker itself is
tested on tiny synthetic packages, so it is shown able to fail."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = ["runner", "tasks", "methods", "models", "kernels"]


def _modules(repo: Path, layers: list[str]) -> dict[str, Path]:
    mods = {}
    for pkg in layers:  # a layer that does not exist (yet) has no modules
        for f in sorted((repo / pkg).rglob("*.py")) if (repo / pkg).is_dir() else []:
            parts = f.relative_to(repo).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imports(name: str, path: Path):
    """(module, names imported from it, line) for every import statement anywhere in the file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            yield ".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names], node.lineno


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan: the strongly connected components of more than one module."""
    index, low, stack, sccs = {}, {}, [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(sccs)


def problems(repo: Path, layers: list[str]) -> list[str]:
    """One line per import problem among the modules of `layers` (packages under `repo`, top first)."""
    mods, out = _modules(repo, layers), []
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        where, top = f.relative_to(repo), m.split(".")[0]
        for target, names, line in _imports(m, f):
            if target.split(".")[0] not in layers:
                continue
            # `from pkg import name` imports the submodule pkg.name where that is one, else pkg itself
            hits = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods] or [target]
            graph[m].update(t for t in hits if t in mods and t != m)
            if layers.index(target.split(".")[0]) < layers.index(top):
                out.append(f"upward import: {where}:{line} imports {target}")
            out += [f"private name: {where}:{line} imports {n} from {target}" for n in names
                    if n.startswith("_") and not n.startswith("__") and target != m and f"{target}.{n}" not in mods]
    if "methods.module" in graph.get("methods.base", ()):
        out.append("methods/base.py imports methods/module.py (the module builds on the base, not back)")
    return out + [f"import cycle of {len(c)} modules: {', '.join(c)}" for c in _cycles(graph)]


def test_repo_import_layers():
    found = problems(REPO, LAYERS)
    assert found == [], "\n".join(found)


# ------------------------------------------------------------------------- the checker, on synthetic repos
def _repo(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {"top/__init__.py": "", "low/__init__.py": "", **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


CASES = {  # id -> (files, the one problem expected, "" for none)
    "clean": ({"top/a.py": "import low.b\nfrom low import b\nfrom top import c\nfrom low.b import __all__\n",
               "top/c.py": "", "low/b.py": "import os\n"}, ""),
    "cycle": ({"low/a.py": "from low import b\n", "low/b.py": "import low.a\n"},
              "import cycle of 2 modules: low.a, low.b"),
    "init cycle": ({"low/__init__.py": "from low.a import f\n", "low/a.py": "from low import g\n"},
                   "import cycle of 2 modules: low, low.a"),
    "upward": ({"low/a.py": "import top.b\n", "top/b.py": ""}, "upward import: low/a.py:1 imports top.b"),
    "private": ({"top/a.py": "from low.b import _hidden\n", "low/b.py": ""},
                "private name: top/a.py:1 imports _hidden from low.b"),
    "lazy": ({"low/a.py": "def f():\n    from top import b\n", "top/b.py": ""},
             "upward import: low/a.py:2 imports top"),
    "type checking": ({"low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import top\n"},
                      "upward import: low/a.py:3 imports top"),
    "relative": ({"low/s/__init__.py": "", "low/s/a.py": "from ..b import _x\n", "low/b.py": ""},
                 "private name: low/s/a.py:1 imports _x from low.b"),
    "relative cycle": ({"low/s/__init__.py": "from . import a\n", "low/s/a.py": "from .. import s\n"},
                       "import cycle of 2 modules: low.s, low.s.a"),
    "base imports module": ({"methods/__init__.py": "", "methods/module.py": "",
                             "methods/base.py": "def f():\n    from .module import M\n"},
                            "methods/base.py imports methods/module.py (the module builds on the base, not back)"),
}


@pytest.mark.parametrize("case", CASES)
def test_checker_finds_each_problem(tmp_path, case):
    files, expected = CASES[case]
    found = problems(_repo(tmp_path, files), ["top", "methods", "missing", "low"])
    assert found == ([expected] if expected else []), found
