"""The package's shape: no import circle between files (in-function imports and names taken from a package's face count
too), the model layer below the engine, files.py at the bottom, imports at the top, no private name shared."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_module(p): p for p in SRC.rglob("*.py")}


def _import_nodes(path: Path) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import of ``path``, with whether it sits inside a function (so it runs late, but still depends)."""
    out: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def walk(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append((child, inside))
            walk(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(ast.parse(path.read_text()), False)
    return out


def _absolute(node: ast.ImportFrom, me: str, path: Path) -> str:
    base = node.module or ""
    if node.level:
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        up = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([base] if base else []))
    return base


def _owner(name: str) -> str | None:
    while name and name not in FILES:
        name = name.rpartition(".")[0]
    return name or None


def _face_names(package: str) -> dict[str, str]:
    """What a package's ``__init__`` takes from its own submodules: name -> the submodule that defines it."""
    path = FILES[package]
    out = {}
    for node, _ in _import_nodes(path):
        if isinstance(node, ast.ImportFrom):
            base = _absolute(node, package, path)
            for a in node.names:
                if base.startswith(package + ".") and base in FILES:
                    out[a.asname or a.name] = base
    return out


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, inside a function) for each of the package's own modules ``path`` imports; a name taken from a
    package's face (``from ressenet.models import create_model``) is traced to the submodule that defines it."""
    me = _module(path)
    out = []
    for node, inside in _import_nodes(path):
        if isinstance(node, ast.Import):
            targets = [_owner(a.name) for a in node.names]
        else:
            base = _absolute(node, me, path)
            targets = []
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in FILES:  # a submodule: `from ressenet.data import fetch`
                    targets.append(full)
                elif base in FILES and FILES[base].name == "__init__.py" and base != me:
                    targets.append(_face_names(base).get(a.name, base))
                else:
                    targets.append(_owner(base))
        out += [(t, inside) for t in targets if t and t != me]
    return out


def _graph() -> dict[str, set[str]]:
    graph = {m: {d for d, _ in _imports(p)} for m, p in FILES.items()}
    # A package's __init__ gathering its own submodules into its face is not a dependency of the design.
    graph = {m: {d for d in deps if not (d.startswith(m + ".") and FILES[m].name == "__init__.py")}
             for m, deps in graph.items()}
    for m in graph:  # importing a submodule also runs its parent packages' __init__: that is not a dependency edge
        graph[m] = {d for d in graph[m] if not m.startswith(d + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
    return cycles


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_sees_through_faces_and_functions():
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    graph = _graph()
    # `from ressenet.models import create_model` (a face) inside a function is an edge to models/registry.py
    assert "ressenet.models.registry" in graph["ressenet.engine.setup"]


LOWER = {"ressenet.models", "ressenet.weights", "ressenet.files", "ressenet.errors"}  # know architectures and files
UPPER = ("ressenet.engine", "ressenet.experiments", "ressenet.analysis")


def test_models_and_weights_import_nothing_above_them():
    bad = {m: sorted(d for d in deps if d.startswith(UPPER)) for m, deps in _graph().items()
           if m.startswith(tuple(LOWER))}
    assert not {m: d for m, d in bad.items() if d}, f"the model layer imports engine/experiments/analysis: {bad}"


def test_files_is_the_bottom():
    assert _graph()["ressenet.files"] <= {"ressenet.errors"}


LATE_IMPORT_LIMIT = 40


def test_imports_sit_at_the_top_unless_a_comment_says_why():
    late = [(str(p.relative_to(SRC)), node.lineno) for m, p in FILES.items() for node, inside in _import_nodes(p)
            if inside and any(t for t, _ in _imports_of(node, m, p))]
    assert len(late) <= LATE_IMPORT_LIMIT, f"{len(late)} in-function imports of the package's own modules: {late}"
    # Each says why it is late, in a comment on its line or on the line above (start-up cost, optional dependency).
    lines = {p: p.read_text().splitlines() for p in FILES.values()}
    silent = [(f, n) for f, n in late if "#" not in lines[SRC / f][n - 1] and "#" not in lines[SRC / f][n - 2]]
    assert not silent, f"in-function imports without a comment saying why: {silent}"


def _imports_of(node: ast.Import | ast.ImportFrom, me: str, path: Path) -> list[tuple[str, bool]]:
    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [_absolute(node, me, path)]
    return [(n, True) for n in names if n == "ressenet" or n.startswith("ressenet.")]


def test_no_private_name_crosses_modules():
    crossing = []
    for m, p in FILES.items():
        for node, _ in _import_nodes(p):
            if isinstance(node, ast.ImportFrom) and _absolute(node, m, p).startswith("ressenet"):
                crossing += [f"{m} takes {a.name}" for a in node.names if a.name.startswith("_")
                             and not a.name.startswith("__")]
    assert not crossing, crossing


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
