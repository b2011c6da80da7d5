"""The package's shape: no import cycle anywhere in lowprec/, search never imports drift, registries
are literals, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lowprec"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """Every lowprec module `path` imports, at module level or inside functions."""
    out: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            # the module itself, or the nearest enclosing lowprec module
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "lowprec":
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    return {m: imports(p, modules) - {m} for m, p in files.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_lowprec():
    g = graph()
    assert "lowprec.serve.runtime" in g and g["lowprec.serve.runtime"]  # the graph is real
    assert find_cycle(g) is None, " -> ".join(find_cycle(g))


def test_search_does_not_import_drift():
    g = graph()
    reach, todo = set(), [m for m in g if m.startswith("lowprec.search")]
    while todo:
        m = todo.pop()
        for n in g[m]:
            if n not in reach:
                reach.add(n)
                todo.append(n)
    assert not [m for m in reach if m.startswith("lowprec.drift")]


@pytest.mark.parametrize("root", ["lowprec", "tools"])
def test_modules_stay_small(root):
    big = {str(p.relative_to(PKG.parent)): n for p in (PKG.parent / root).rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
