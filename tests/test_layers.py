"""The package's layers, checked from the source: imports go one way, there are no cycles, and start-up is light.

Layers, lowest first (a module may import its own layer and the ones below it, never one above):

    core     images, prompts, parsing, distortions, readout, qinsight, smoke, hub, scorer, backends (vq_reward/*.py)
    rewards  vq_reward/rewards/   reward adapters for other people's loops
    data     vq_reward/data/      labels, rows, JSONL, distorted sets, results files
    eval     vq_reward/eval/      metrics and reports
    cli      vq_reward/cli/       the command line: imports the library, never imported by it
    train    vq_reward/train/     retraining: imports the library, never imported by it

Every import counts, function-local and `TYPE_CHECKING` ones included, so a cycle cannot hide behind a lazy import.
One upward import is allowed by name: the scorer's `as_reward` / `as_differentiable_reward` / `as_trl_reward`
shortcuts import `vq_reward.rewards` when called, and name its classes in a `TYPE_CHECKING` block for their return
types (the rewards import the scorer, not the other way round).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "vq_reward"
LAYERS = ["core", "rewards", "data", "eval", "cli", "train"]
SHORTCUTS = {"as_reward", "as_differentiable_reward", "as_trl_reward", "TYPE_CHECKING"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in LAYERS:
        return parts[1]
    if len(parts) == 2 and parts[1] in LAYERS:  # a subpackage's __init__
        return parts[1]
    return "core"


def resolve(target: str) -> str:
    """The module an import names (`from vq_reward import prompts` names the module vq_reward.prompts)."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def excused(module: str, target: str, function: str | None) -> bool:
    """The one allowed upward import: the scorer's reward shortcuts (see the module docstring)."""
    return module == "vq_reward.scorer" and layer(target) == "rewards" and function in SHORTCUTS


def imports(module: str) -> list[tuple[str, str | None]]:
    """`(imported module, enclosing function or None)` for every vq_reward import in `module`."""
    tree = ast.parse(MODULES[module].read_text())
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                inner = "TYPE_CHECKING"
            if isinstance(child, ast.Import):
                found.extend((resolve(a.name), function) for a in child.names if a.name.startswith("vq_reward"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("vq_reward"):
                for alias in child.names:
                    found.append((resolve(f"{child.module}.{alias.name}"), function))
            visit(child, inner)

    visit(tree, None)
    return [(target, function) for target, function in found if target != module]


GRAPH = {module: imports(module) for module in MODULES}


def test_imports_go_one_way():
    upward = []
    for module, targets in GRAPH.items():
        for target, function in targets:
            if LAYERS.index(layer(target)) <= LAYERS.index(layer(module)) or excused(module, target, function):
                continue
            upward.append(f"{module} ({layer(module)}) imports {target} ({layer(target)}) in {function or 'module'}")
    assert upward == []


def test_no_import_cycles():
    edges = {
        module: {target for target, function in targets if not excused(module, target, function)}
        for module, targets in GRAPH.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                walk(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    assert cycles == []


def test_the_check_sees_lazy_imports():
    # A function-local import is an edge like any other: the scorer's shortcut is found, and only it is excused.
    assert ("vq_reward.rewards", "as_reward") in GRAPH["vq_reward.scorer"]
    assert layer("vq_reward.rewards.source") == "rewards" and layer("vq_reward.cli") == "cli"


@pytest.mark.parametrize("command", [[], ["score"], ["make-tiny"], ["distort"], ["prepare-data"], ["eval"]])
def test_help_and_import_start_without_torch(command):
    code = (
        "import sys, contextlib, io\n"
        "import vq_reward\n"
        "assert 'torch' not in sys.modules, 'import vq_reward pulled in torch'\n"
        "from vq_reward.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        f"        main({command!r} + ['--help'])\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, exit.code\n"
        "assert 'usage: vq-reward' in out.getvalue()\n"
        "heavy = sorted(name for name in ('torch', 'transformers', 'numpy', 'PIL') if name in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
