"""The package's shape: no import cycle between its modules (imports inside functions count too)."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    me = _module(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != me:
                out.add(n)
    return out


def test_no_import_cycles():
    files = {_module(p): p for p in SRC.rglob("*.py")}
    graph = {m: _imports(p, set(files)) for m, p in files.items()}
    # A package's __init__ importing its own submodules is not a cycle of the code's design; drop those edges.
    graph = {m: {d for d in deps if not (d.startswith(m + ".") and files[m].name == "__init__.py")}
             for m, deps in graph.items()}
    for m in graph:  # importing a submodule also runs its parent packages' __init__: that is not a dependency edge
        graph[m] = {d for d in graph[m] if not m.startswith(d + ".")}
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


RUN_DIR_FILES = {"config.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json", "train.log"}
OWNER = SRC / "ressenet" / "engine" / "rundir.py"  # RunDir: the one place a run directory's file names are spelled


def _spelled(path: Path) -> list[tuple[int, str]]:
    """(line, name) for each string literal of ``path`` that is exactly a run-directory file name (prose in
    messages and docstrings, such as "delete summary.json", does not count: it names the file, it does not open it)."""
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RUN_DIR_FILES]


def test_run_directory_file_names_are_spelled_only_by_their_owner():
    found = {str(p.relative_to(SRC)): hits for p in sorted(SRC.rglob("*.py")) if p != OWNER and (hits := _spelled(p))}
    assert not found, f"use engine/rundir.RunDir instead of spelling its file names: {found}"
    assert {name for _, name in _spelled(OWNER)} == RUN_DIR_FILES  # the check looks for the names the owner uses


def test_the_owner_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('from pathlib import Path\nsummary = Path("run") / "summary.json"\nnote = "see last.pt"\n')
    assert _spelled(bad) == [(2, "summary.json")]
