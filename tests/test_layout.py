"""The package's shape, checked: import direction, no cycles, exact DVC deps, small commands.

Every import of ``pipeline`` code counts, wherever it sits (module top, inside a function, under
``TYPE_CHECKING``): a lazy import still makes the stage's result depend on that file.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGE = REPO / "pipeline"
# Library packages from the bottom up: a package may import only those below it.
LAYERS = {"config": 0, "data": 1, "training": 2, "tracking": 3, "study": 4, "registry": 5}
# Small shared plumbing: importable by everyone, importing nothing of ours but errors.
PLUMBING = {"cli", "errors", "atomic", "secrets", "gc_policy"}
# Third-party packages a library package must not import (the joins happen higher up).
FORBIDDEN_THIRD_PARTY = {
    "config": {"torch", "mlflow", "optuna"},
    "data": {"mlflow", "optuna"},
    "training": {"mlflow", "optuna"},
    "tracking": {"optuna"},
}
# Third-party packages that cost a command real start-up time (BENCHMARKS.md, "Import costs").
# An import inside a function is allowed only when it defers one of these that the file does not
# already load at its top: everything else is imported at module top.
HEAVY_THIRD_PARTY = {
    "torch", "torchvision", "mlflow", "matplotlib", "sklearn",
    "optuna.visualization",  # draws with matplotlib: optuna itself is light
}
MAX_COMMAND_LINES = 250
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8
MAX_STUDY_CLASS_LINES = 120  # the search library's classes stay readable in one screenful
# Known offenders. The checks fail on any new one, and on an entry here that no longer offends
# (so the list only shrinks).
KNOWN_BIG_COMMANDS: set[str] = set()
KNOWN_LONG_FUNCTIONS: set[str] = {
    "pipeline/tracking/models.py log_model",
}
KNOWN_BIG_STUDY_CLASSES: set[str] = set()
# How an MLflow run ends (its status, the tags that say how and why, a trial run's name) has
# one owner; every other module calls it.
RUN_ENDINGS_OWNER = "pipeline.tracking.endings"
RUN_ENDING_TAGS = {"optuna.state", "pipeline.error", "pipeline.stop_reason", "mlflow.runName"}


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(dotted: str) -> str | None:
    """The module a dotted name refers to (a module, or the package's ``__init__``)."""
    while dotted:
        if dotted in MODULES:
            return dotted
        dotted = dotted.rpartition(".")[0]
    return None


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every imported name, fully dotted, with its line (``from a import b`` gives ``a.b``)."""
    tree = _tree(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield f"{node.module}.{alias.name}", node.lineno
            yield node.module, node.lineno


def _ours(module: str) -> set[str]:
    found = set()
    for name, _ in _imports(MODULES[module]):
        if name == "pipeline" or name.startswith("pipeline."):
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {module: _ours(module) for module in MODULES}


def _ancestors(module: str) -> set[str]:
    """The packages Python initialises before ``module`` (their ``__init__`` files)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _closure(start: str, graph: dict[str, set[str]] | None = None) -> set[str]:
    """``start`` and every module of ours it loads through ``graph`` (default: every import)."""
    edges = GRAPH if graph is None else graph
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(edges[module] | _ancestors(module))
    return seen


def _area(module: str) -> str:
    """``config``/``data``/… for a package module, else the top-level module's own name."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def _is_command(module: str) -> bool:
    return module.count(".") == 1 and _area(module) not in LAYERS | dict.fromkeys(PLUMBING)


def _stage_deps() -> dict[str, tuple[list[str], set[str]]]:
    """Stage name → (its command modules, the ``pipeline/`` files its ``deps:`` list)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        words = body["cmd"].split()
        modules = [words[i + 1] for i, w in enumerate(words) if w == "-m"]
        deps = {d for d in body.get("deps", []) if str(d).startswith("pipeline/")}
        out[name] = (modules, deps)
    return out


def _needed(modules: list[str]) -> set[str]:
    return {str(MODULES[m].relative_to(REPO)) for module in modules for m in _closure(module)}


@pytest.mark.parametrize("stage", sorted(_stage_deps()))
def test_dvc_deps_are_exactly_the_code_each_stage_imports(stage: str) -> None:
    modules, listed = _stage_deps()[stage]
    needed = _needed(modules)
    missing, extra = sorted(needed - listed), sorted(listed - needed)
    assert not missing and not extra, (
        f"dvc.yaml stage {stage!r}: add {missing} / remove {extra} "
        "(a stale list makes `dvc repro` skip a stage whose code changed)"
    )


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_imports_point_downward() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        area = _area(module)
        for target in targets:
            there = _area(target)
            if there == area or target == "pipeline":
                continue
            if area in PLUMBING:
                ok = there in ("errors", "gc_policy")  # the two leaves the others may use
            elif there in PLUMBING:
                ok = True
            elif _is_command(target):
                ok = False  # nothing imports a command
            elif _is_command(module):
                ok = True
            else:
                ok = LAYERS[there] < LAYERS[area]
            if not ok:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(sorted(wrong))


def test_library_packages_stay_out_of_other_layers_libraries() -> None:
    wrong = []
    for module, path in MODULES.items():
        banned = FORBIDDEN_THIRD_PARTY.get(_area(module), set())
        for name, line in _imports(path):
            if name.split(".")[0] in banned:
                wrong.append(f"{path.relative_to(REPO)}:{line}: imports {name}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _statement_targets(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """What one import statement loads: a module per name (``from a import b``: ``a.b`` when it
    is one of ours, else ``a``)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif node.module:
        for alias in node.names:
            dotted = f"{node.module}.{alias.name}"
            yield dotted if dotted in MODULES else node.module


def _top_level_imports(path: Path) -> Iterator[str]:
    """Modules loaded when ``path`` is imported (not in functions, not under TYPE_CHECKING)."""

    def walk(body: list[ast.stmt]) -> Iterator[str]:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield from _statement_targets(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    yield from walk(node.body)
                yield from walk(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody):
                    yield from walk(block)
                for handler in node.handlers:
                    yield from walk(handler.body)

    yield from walk(_tree(path).body)


def _heavy(name: str) -> str | None:
    """The ``HEAVY_THIRD_PARTY`` entry that importing ``name`` loads, if any."""
    for entry in HEAVY_THIRD_PARTY:
        if name == entry or name.startswith(entry + "."):
            return entry
    return None


@functools.cache
def _top_graph() -> dict[str, set[str]]:
    """Like GRAPH, but only the imports that run when a module is imported."""
    graph = {}
    for module, path in MODULES.items():
        names = (_resolve(n) for n in _top_level_imports(path) if n.split(".")[0] == "pipeline")
        graph[module] = {n for n in names if n is not None and n != module}
    return graph


@functools.cache
def _paid_at_import(module: str) -> frozenset[str]:
    """The heavy third-party packages that importing ``module`` loads."""
    return frozenset(
        entry for current in _closure(module, _top_graph())
        for entry in map(_heavy, _top_level_imports(MODULES[current])) if entry is not None
    )


def test_imports_sit_at_module_top_unless_they_defer_a_heavy_package() -> None:
    wrong = []
    for module, path in MODULES.items():
        paid = _paid_at_import(module)
        for fn in _functions(_tree(path)):
            for node in ast.walk(fn):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                for name in _statement_targets(node):
                    ours = _resolve(name) if name.split(".")[0] == "pipeline" else None
                    deferred = (
                        _paid_at_import(ours) if ours is not None
                        else {_heavy(name)} - {None}
                    )
                    if not deferred - paid:
                        wrong.append(f"{path.relative_to(REPO)}:{node.lineno} {fn.name}: {name}")
    assert not wrong, (
        "imports inside functions that defer no heavy package the file does not already load "
        "(move them to the module top):\n" + "\n".join(sorted(set(wrong)))
    )


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_commands_are_small() -> None:
    big = {
        str(MODULES[m].relative_to(REPO))
        for m in MODULES
        if _is_command(m) and len(MODULES[m].read_text().splitlines()) > MAX_COMMAND_LINES
    }
    assert big <= KNOWN_BIG_COMMANDS, f"commands over {MAX_COMMAND_LINES} lines: {big}"
    assert big == KNOWN_BIG_COMMANDS, f"now small, drop from the list: {KNOWN_BIG_COMMANDS - big}"


def test_functions_are_short_and_take_few_parameters() -> None:
    wrong = []
    known = set()
    for path in MODULES.values():  # every package (known offenders are listed above)
        tree = _tree(path)
        for fn in _functions(tree):
            where = f"{path.relative_to(REPO)}:{fn.lineno} {fn.name}"
            length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            args = fn.args
            names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
            names = [n for n in names if n not in ("self", "cls")]
            too_long = length > MAX_FUNCTION_LINES
            problems = [f"{length} lines"] if too_long else []
            if len(names) > MAX_PARAMETERS:
                problems.append(f"{len(names)} parameters")
            if f"{path.relative_to(REPO)} {fn.name}" in KNOWN_LONG_FUNCTIONS:
                if problems:  # still offends: stays listed; once fixed the list must shrink
                    known.add(f"{path.relative_to(REPO)} {fn.name}")
                continue
            wrong += [f"{where}: {p}" for p in problems]
    assert not wrong, "\n".join(wrong)
    fixed = KNOWN_LONG_FUNCTIONS - known
    assert not fixed, f"fixed, drop from the list: {fixed}"


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules (or module attributes) an import statement names, in its order."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [f"{node.module}.{a.name}" for a in node.names]


def test_every_command_has_one_shape() -> None:
    """``build_parser()``, ``main(argv)`` calling the stage's library side ``run_<stage>()``,
    ``raise SystemExit(main())``, and the params file's name from ``PARAMS_FILE``."""
    wrong = []
    for module, path in MODULES.items():
        if not _is_command(module):
            continue
        tree = _tree(path)
        top = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        where = str(path.relative_to(REPO))
        wrong += [f"{where}: no {f}()" for f in ("build_parser", "main") if f not in top]
        ending = tree.body[-1]
        if "raise SystemExit(main())" not in ast.unparse(ending):
            wrong.append(f"{where}: does not end with `raise SystemExit(main())`")
        calls = {getattr(n.func, "attr", getattr(n.func, "id", "")) for n in ast.walk(tree)
                 if isinstance(n, ast.Call)}
        if f"run_{module.split('.')[-1]}" not in calls:
            wrong.append(f"{where}: does not call its library side run_{module.split('.')[-1]}()")
        first = next((n for n in tree.body if isinstance(n, ast.ImportFrom | ast.Import)
                      and any(name.startswith("pipeline") for name in _imported(n))), None)
        if first is None or _imported(first)[:1] != ["pipeline.cli"]:
            wrong.append(f"{where}: its first pipeline import is not `from pipeline import "
                         "cli` (the collector's set-up for a command, pipeline.gc_policy)")
        literal = [n.lineno for n in ast.walk(tree)
                   if isinstance(n, ast.Constant) and n.value == "params.yaml"]
        wrong += [f"{where}:{line}: 'params.yaml' (use PARAMS_FILE)" for line in literal]
    assert not wrong, "\n".join(wrong)


def test_study_classes_are_short() -> None:
    wrong, known = [], set()
    for module, path in MODULES.items():
        if _area(module) != "study":
            continue
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.ClassDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            name = f"{path.relative_to(REPO)} {node.name}"
            if length <= MAX_STUDY_CLASS_LINES:
                continue
            if name in KNOWN_BIG_STUDY_CLASSES:
                known.add(name)
            else:
                wrong.append(f"{name}: {length} lines")
    assert not wrong, "\n".join(wrong)
    assert known == KNOWN_BIG_STUDY_CLASSES, (
        f"now short, drop from the list: {KNOWN_BIG_STUDY_CLASSES - known}")


def _ends_runs(node: ast.AST) -> str | None:
    """What in ``node`` ends an MLflow run or says how it ended, if anything."""
    if isinstance(node, ast.Constant) and node.value in RUN_ENDING_TAGS:
        return f"the tag {node.value!r}"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        owner = getattr(node.func.value, "id", "")
        if node.func.attr == "set_terminated" or (
            owner == "mlflow" and node.func.attr in ("end_run", "start_run")
        ):
            return f"{owner or '…'}.{node.func.attr}()"
    return None


def test_one_module_owns_how_a_run_ends() -> None:
    """Run statuses, end tags and trial run names are set in ``tracking/endings.py`` only."""
    wrong = []
    for module, path in MODULES.items():
        if module == RUN_ENDINGS_OWNER:
            continue
        for node in ast.walk(_tree(path)):
            what = _ends_runs(node)
            if what is not None:
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: {what}")
    assert not wrong, (
        f"end runs and set their end tags through {RUN_ENDINGS_OWNER}:\n" + "\n".join(wrong))
    owner = _tree(MODULES[RUN_ENDINGS_OWNER])
    assert any(_ends_runs(n) for n in ast.walk(owner)), "the owner must be the one doing it"


def test_library_code_never_prints_or_exits() -> None:
    wrong = []
    for module, path in MODULES.items():
        if _is_command(module) or _area(module) == "cli":
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.id if isinstance(fn, ast.Name) else getattr(fn, "attr", "")
                owner = getattr(getattr(fn, "value", None), "id", "")
                if name == "print" or (owner == "sys" and name == "exit"):
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: {owner or ''}{name}")
    assert not wrong, "\n".join(wrong)


def write_dvc_deps(path: Path = REPO / "dvc.yaml") -> None:
    """Rewrite each stage's ``pipeline/`` deps in dvc.yaml from the import walk, in place.

    Run ``python -m tests.test_layout`` after changing imports; comments and order are kept.
    """
    lines = path.read_text().splitlines(keepends=True)
    stages = _stage_deps()
    out: list[str] = []
    stage = None
    for line in lines:
        name = re.match(r"^  ([A-Za-z0-9_-]+):\s*$", line)
        if name:
            stage = name.group(1)
        if stage in stages and re.match(r"^\s+- pipeline/", line):
            indent = line[: line.index("-")]
            if stage is not None and not out[-1].lstrip().startswith("- pipeline/"):
                out += [f"{indent}- {dep}\n" for dep in sorted(_needed(stages[stage][0]))]
            continue
        out.append(line)
    path.write_text("".join(out))


if __name__ == "__main__":
    write_dvc_deps()
