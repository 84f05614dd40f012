"""The package layout, checked from the source: no import cycles, arrows pointing down, no hidden imports, short functions.

Every module of every folder that installs under ``driftsim`` (the
``package-dir`` table of pyproject.toml) is parsed with ``ast``; nothing is
imported. A ``driftsim`` import counts wherever it sits: at module level,
under ``if TYPE_CHECKING:`` or inside a function.

The allow-lists below say why each exception exists; an entry that no
longer applies fails the test, so the lists stay honest.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Packages bottom to top; a module may import its own package or one in a lower layer, never the same layer's
#: other packages or a higher one. ``driftsim`` itself (its lazy ``__init__``) may be imported from anywhere.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("traces", "costmodel"),
    ("admission",),
    ("sim",),
    ("profiling",),
    ("validation", "capacity", "experiments"),
    ("cli",),
    ("__main__",),  # ``python -m driftsim``: the command line's entry point, above everything
)
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


#: Import cycles allowed for now, each as the set of modules in it, with the reason.
CYCLES_ALLOWED: dict[frozenset[str], str] = {
}

#: Modules allowed to import driftsim modules inside functions, with the reason.
INNER_IMPORTS_ALLOWED: dict[str, str] = {
    "driftsim.cli.main": (
        "start-up time: commands import the library when they run, so `driftsim --help` does not load "
        "polars, numpy and plotly (figures in the module's docstring)"
    ),
    "driftsim.cli.capacity_cmds": "start-up time, as driftsim.cli.main",
    "driftsim.cli.compare_cmds": "start-up time, as driftsim.cli.main",
    "driftsim.cli.profiling_cmds": "start-up time, as driftsim.cli.main",
    "driftsim.cli.validate_cmds": "start-up time, as driftsim.cli.main",
    "driftsim.cli.gpu_cmds": "start-up time, as driftsim.cli.main",
    "driftsim.cli.published_cmds": "start-up time, as driftsim.cli.main",
}

MAX_FUNCTION_LINES = 80

#: Functions allowed over MAX_FUNCTION_LINES, as (module, qualified name), with the reason.
LONG_FUNCTIONS_ALLOWED: dict[tuple[str, str], str] = {
}


@dataclass(frozen=True)
class Import:
    """One ``driftsim`` import: the importing module, the module it names, its line, and whether it sits in a function."""

    source: str
    target: str
    line: int
    in_function: bool


@dataclass(frozen=True)
class Function:
    source: str
    name: str  # qualified: Class.method, outer.inner
    lines: int


def _package_folders() -> dict[str, Path]:
    """``{"driftsim.sim": ROOT / "sim", ...}`` from pyproject.toml's package-dir table."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        package_dir = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {package: ROOT / folder for package, folder in package_dir.items()}


def _modules() -> dict[str, Path]:
    """Every module's dotted name -> its file (a package's ``__init__.py`` is the package's own name)."""
    out: dict[str, Path] = {}
    for package, folder in _package_folders().items():
        for path in sorted(folder.glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module an imported name lives in: the longest known module prefix of ``name``."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imported_names(node: ast.Import | ast.ImportFrom, source: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        is_package = MODULES[source].stem == "__init__"
        parts = source.split(".")[: len(source.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join([*parts, base] if base else parts)
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def _scan(source: str) -> tuple[list[Import], list[Function]]:
    """The module's driftsim imports and its functions' lengths."""
    imports: list[Import] = []
    functions: list[Function] = []

    def visit(node: ast.AST, in_function: bool, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualified = [*scope, child.name]
                functions.append(Function(source, ".".join(qualified), child.end_lineno - child.lineno + 1))
                visit(child, True, qualified)
            elif isinstance(child, ast.ClassDef):
                visit(child, in_function, [*scope, child.name])
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                targets = {_resolve(n) for n in _imported_names(child, source) if n.split(".")[0] == "driftsim"}
                imports.extend(Import(source, t, child.lineno, in_function) for t in sorted(targets - {None, source}))
            else:
                visit(child, in_function, scope)

    visit(ast.parse(MODULES[source].read_text(), filename=str(MODULES[source])), False, [])
    return imports, functions


SCANS = {module: _scan(module) for module in MODULES}
IMPORTS = [i for imports, _ in SCANS.values() for i in imports]
FUNCTIONS = [f for _, functions in SCANS.values() for f in functions]


def _package(module: str) -> str | None:
    """``driftsim.sim.engine`` -> ``sim``; ``driftsim.errors`` -> ``errors``; ``driftsim`` -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for i in IMPORTS:
        edges[i.source].add(i.target)
    return edges


def test_every_package_folder_is_scanned():
    packages = {_package(m) for m in MODULES}
    assert {"errors", "traces", "costmodel", "admission", "sim", "profiling", "validation", "capacity",
            "experiments", "cli"} <= packages  # fmt: skip
    assert packages - {None} <= set(RANK), f"a package with no layer: {sorted(packages - {None} - set(RANK))}"


def test_no_import_cycles():
    cycles = [sorted(c) for c in _cycles(_edges()) if c not in CYCLES_ALLOWED]
    assert not cycles, f"import cycles (module level and function level both count): {cycles}"


def test_imports_point_down_the_layers():
    wrong = []
    for i in IMPORTS:
        source, target = _package(i.source), _package(i.target)
        if source is None or target is None or source == target:
            continue  # driftsim/__init__ may name anything; anyone may import the package root; a package its own modules
        if RANK[target] >= RANK[source]:
            wrong.append(f"{i.source}:{i.line} imports {i.target} ({target} is not below {source})")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_no_driftsim_imports_inside_functions():
    hidden = sorted({f"{i.source}:{i.line} imports {i.target}" for i in IMPORTS
                     if i.in_function and i.source not in INNER_IMPORTS_ALLOWED})  # fmt: skip
    assert not hidden, "imports inside functions (move them to the top; a cycle means code is in the wrong module):\n" + "\n".join(hidden)


def test_no_function_over_80_lines():
    long = [f"{f.source}.{f.name}: {f.lines} lines" for f in FUNCTIONS
            if f.lines > MAX_FUNCTION_LINES and (f.source, f.name) not in LONG_FUNCTIONS_ALLOWED]  # fmt: skip
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(long)


@pytest.mark.parametrize("allowed", [CYCLES_ALLOWED, INNER_IMPORTS_ALLOWED, LONG_FUNCTIONS_ALLOWED])
def test_every_allowance_says_why(allowed):
    assert all(isinstance(reason, str) and len(reason) > 20 for reason in allowed.values())


def test_permanent_allowances_are_still_needed():
    """An exception that is not TEMPORARY and no longer applies is removed, so the lists stay honest."""
    inner = {i.source for i in IMPORTS if i.in_function}
    long = {(f.source, f.name) for f in FUNCTIONS if f.lines > MAX_FUNCTION_LINES}
    cycles = set(_cycles(_edges()))
    stale = [m for m in INNER_IMPORTS_ALLOWED if m not in inner]
    stale += [f for f in LONG_FUNCTIONS_ALLOWED if f not in long]
    stale += [sorted(c) for c in CYCLES_ALLOWED if c not in cycles]
    assert not stale, f"allowances no longer needed: {stale}"


def test_the_cycle_finder_finds_a_cycle():
    """The checks above are only as good as the cycle finder: a two- and a three-module cycle are found."""
    edges = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "a"}, "f": set()}
    assert sorted(map(sorted, _cycles(edges))) == [["a", "b"], ["c", "d", "e"]]
