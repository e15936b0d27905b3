"""The layering of ``irra_core`` (docs/ARCHITECTURE.md), checked on the source: every import points down, no cycle.

Every module under ``irra_core`` is parsed with :mod:`ast` (nothing is imported). Both module-level imports and
imports inside functions count: a deferred import still makes that code depend on the other module, it only hides
the dependency from the import machinery. Imports under ``if TYPE_CHECKING:`` are annotations only: they count for
the layers, not for cycles.

Layers, lowest first (a module may import its own layer and the layers listed in ``ALLOWED``):

* foundation: the package itself, ``config``, ``datasets`` (the dataset registry), ``paths``, ``io_utils``, ``runtime``, ``errors``, ``cli`` (the
  error printer of the command-line tools, which imports nothing above it);
* ``losses`` (torch alone: no ``irra_core`` import at all); ``data`` (never the model);
* ``model`` (never data, engine or viz; it may use ``losses``);
* ``evaluation`` (never the engine);
* engine: ``engine``, ``runs``, ``optim``, ``scheduler``, ``checkpoint``, ``distributed``, ``train_progress``,
  ``alongside``;
* ``viz``; workbook: ``workbook``, ``train_notebook``; ``pipeline``;
* entry points, which may import anything: ``train``, ``test``, ``search``, ``transfer`` and every ``__main__``.

Cycles are looked for in the module graph of all runtime imports, except a package ``__init__`` importing its own
submodules (a re-export: importing a submodule runs its package ``__init__`` first anyway, so that edge adds
nothing to the order of imports).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "irra_core"

FOUNDATION = {"", "config", "datasets", "paths", "io_utils", "runtime", "errors", "cli"}
ENGINE = {"engine", "runs", "optim", "scheduler", "checkpoint", "distributed", "train_progress", "alongside"}
WORKBOOK = {"workbook", "train_notebook"}
ENTRY = {"train", "test", "search", "transfer", "__main__"}
SUBPACKAGES = {"data", "model", "evaluation", "viz"}

_BELOW_EVALUATION = {"foundation", "losses", "data", "model"}
ALLOWED = {
    "foundation": {"foundation"},
    "losses": set(),
    "data": {"foundation", "data"},
    "model": {"foundation", "losses", "model"},
    "evaluation": _BELOW_EVALUATION | {"evaluation"},
    "engine": _BELOW_EVALUATION | {"evaluation", "engine"},
    "viz": _BELOW_EVALUATION | {"evaluation", "engine", "viz"},
    "workbook": _BELOW_EVALUATION | {"evaluation", "engine", "viz", "workbook"},
    "pipeline": _BELOW_EVALUATION | {"evaluation", "engine", "viz", "workbook", "pipeline"},
}


def layer_of(module: str) -> str | None:
    """The layer of ``irra_core[.x[.y]]``, or None for a module the table above does not place."""
    parts = module.split(".")[1:]
    if parts and parts[-1] == "__main__":
        return "entry"
    head = parts[0] if parts else ""
    if head in SUBPACKAGES or head == "losses" or head == "pipeline":
        return head
    if len(parts) > 1:
        return None
    for layer, names in (("foundation", FOUNDATION), ("engine", ENGINE), ("workbook", WORKBOOK), ("entry", ENTRY)):
        if head in names:
            return layer
    return None


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (a submodule when ``from pkg import submodule``)
    path: Path
    line: int
    deferred: bool  # inside a function
    type_checking: bool  # under ``if TYPE_CHECKING:``


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def collect_imports(root: Path, package: str = PACKAGE) -> tuple[list[str], list[Import]]:
    """Every module of ``root/package`` and every import of a module of that package, parsed with ast."""
    modules, imports = [], []
    for path in sorted((root / package).rglob("*.py")):
        module = module_name(path, root)
        modules.append(module)
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, deferred: bool, type_checking: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    visit(child, True, type_checking)
                    continue
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    visit(child, deferred, True)
                    continue
                targets = []
                if isinstance(child, ast.Import):
                    targets = [alias.name for alias in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = _resolve(child, module, is_package)
                    targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}", root) else base
                               for a in child.names]
                for target in targets:
                    if target == package or target.startswith(package + "."):
                        imports.append(Import(module, target, path, child.lineno, deferred, type_checking))
                visit(child, deferred, type_checking)

        visit(ast.parse(path.read_text(encoding="utf-8")), False, False)
    return modules, imports


def layering_breaks(imports: list[Import]) -> list[str]:
    """One line per import that points to a layer its module may not use (entry points may use any)."""
    breaks = []
    for imp in imports:
        source, target = layer_of(imp.source), layer_of(imp.target)
        if source == "entry" or source is None or target is None:
            continue
        if target != source and target not in ALLOWED[source]:
            where = "inside a function" if imp.deferred else "at module level"
            breaks.append(f"{imp.path.relative_to(ROOT) if imp.path.is_relative_to(ROOT) else imp.path}:{imp.line}: "
                          f"{imp.source} ({source}) imports {imp.target} ({target}) {where}; {source} may import "
                          f"{sorted(ALLOWED[source] | {source}) if ALLOWED[source] else 'nothing from irra_core'}")
    return breaks


def import_cycles(modules: list[str], imports: list[Import]) -> list[list[str]]:
    """The strongly connected components (more than one module, or a module importing itself) of the graph."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.type_checking or imp.target not in graph:
            continue
        if imp.target.startswith(imp.source + ".") and graph.get(imp.source) is not None and \
                _is_package_name(imp.source, modules):
            continue  # a package re-exporting its own submodule
        graph[imp.source].add(imp.target)
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def strongconnect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                strongconnect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return components


def _is_package_name(module: str, modules: list[str]) -> bool:
    return any(m.startswith(module + ".") for m in modules)


MODULES, IMPORTS = collect_imports(ROOT)


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if layer_of(m) is None]
    assert not unplaced, (f"{unplaced}: place each new module in a layer (tests/test_layering.py and "
                          f"docs/ARCHITECTURE.md), or move it into the package of its layer")


def test_imports_follow_the_layers():
    assert len(IMPORTS) > 50, "the import scan found almost nothing: is the package layout different?"
    breaks = layering_breaks(IMPORTS)
    assert not breaks, "layering breaks (docs/ARCHITECTURE.md):\n" + "\n".join(breaks)


def test_no_import_cycle():
    cycles = import_cycles(MODULES, IMPORTS)
    assert not cycles, "import cycles (module-level and deferred imports): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_find_breaks_and_cycles_in_a_toy_package(tmp_path):
    _write(tmp_path, {
        "irra_core/__init__.py": "from irra_core.runtime import x\n",
        "irra_core/runtime.py": "",
        "irra_core/losses.py": "import torch\nfrom irra_core import config\n",  # losses: torch alone
        "irra_core/config.py": "",
        "irra_core/data/__init__.py": "from irra_core.data.parsers import parse\n",  # re-export: no cycle
        "irra_core/data/parsers.py": "from . import loaders\n",
        "irra_core/data/loaders.py": "def f():\n    from irra_core.model.build import build\n"
                                     "    from irra_core.data import parsers\n",
        "irra_core/model/__init__.py": "",
        "irra_core/model/build.py": "from .pretrained import load\n",
        "irra_core/model/pretrained.py": "def g():\n    from irra_core.model import build\n",
        "irra_core/evaluation/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                            "    from irra_core.engine import fit\n",
        "irra_core/engine.py": "from irra_core.evaluation import encode\n",
        "irra_core/train.py": "def h():\n    from irra_core.pipeline import run\n",  # an entry point
        "irra_core/pipeline.py": "from irra_core.workbook import x\n",
        "irra_core/workbook.py": "",
    })
    modules, imports = collect_imports(tmp_path)
    assert "irra_core.data.loaders" in modules and layer_of("irra_core.data.__main__") == "entry"
    breaks = layering_breaks(imports)
    assert len(breaks) == 3, breaks
    assert any("irra_core.losses (losses) imports irra_core.config" in b and "nothing from irra_core" in b
               for b in breaks)
    assert any("irra_core.data.loaders (data) imports irra_core.model.build (model) inside a function" in b
               for b in breaks)
    assert any("irra_core.evaluation (evaluation) imports irra_core.engine" in b for b in breaks)  # TYPE_CHECKING
    cycles = import_cycles(modules, imports)
    # build <-> pretrained (one side deferred) and parsers <-> loaders; not evaluation <-> engine (TYPE_CHECKING),
    # not data <-> data.parsers (a re-export)
    assert sorted(cycles) == [["irra_core.data.loaders", "irra_core.data.parsers"],
                              ["irra_core.model.build", "irra_core.model.pretrained"]]


@pytest.mark.parametrize("module,layer", [("irra_core", "foundation"), ("irra_core.model.php", "model"),
                                          ("irra_core.search", "entry"), ("irra_core.train_progress", "engine"),
                                          ("irra_core.viz.method", "viz"), ("irra_core.somewhere_new", None)])
def test_layer_table(module, layer):
    assert layer_of(module) == layer
