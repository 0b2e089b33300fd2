"""The package's layers, checked from the source: imports go one way, there are no cycles, and start-up is light.

Layers, lowest first (a module may import its own layer and the ones below it, never one above); `LAYERS` below
is the table, and adding a layer is adding its line there:

    base     images, prompts, parsing, readout, loading, devices, distortions, views, scores   (vq_reward/*.py)
    engines  backends/, qinsight, smoke/, hub   the ways a model runs, the smoke models, finding a model by name
                                                (hub: each backend resolves its own model)
    front    scorer, and the package's own __init__ (its lazy exports reach the scorer)
    rewards  vq_reward/rewards/   reward adapters for other people's loops
    data     vq_reward/data/      labels, rows, JSONL, distorted sets
    batch    vq_reward/batch/     the resumable scoring job
    eval     vq_reward/eval/      metrics and reports
    serving  vq_reward/serving/   the Ray Serve deployment
    cli      vq_reward/cli/       the command line: imports the library, never imported by it
    train    vq_reward/train/     retraining: imports the library, never imported by it

Every import counts: relative ones (`from . import scorer`), function-local and `TYPE_CHECKING` ones, and
`importlib.import_module` / `__import__` calls, so neither a cycle nor an upward import can hide behind a lazy
import. A dynamic import whose target is not a string constant (nor an f-string naming a module outside vq_reward)
fails the check unless its module lists the table it reads in `LAZY_TABLES`. Upward imports are allowed only by
qualified name, in `EXCUSED`; an excuse nothing uses fails too. The tests `test_the_check_catches*` add imports to
real modules' source text (never to the files) and require the check to report them.
"""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "vq_reward"

# layer -> the names under vq_reward/ that belong to it, lowest layer first ("" is vq_reward/__init__.py itself)
LAYERS = {
    "base": ("images", "prompts", "parsing", "readout", "loading", "devices", "distortions", "views", "scores"),
    "engines": ("backends", "qinsight", "smoke", "hub"),
    "front": ("scorer", ""),
    "rewards": ("rewards",),
    "data": ("data",),
    "batch": ("batch",),
    "eval": ("eval",),
    "serving": ("serving",),
    "cli": ("cli",),
    "train": ("train",),
}

# The one allowed upward import, as (where, imported module): the scorer's reward shortcuts import vq_reward.rewards
# when called and name its classes in a TYPE_CHECKING block for their return types (the rewards import the scorer).
EXCUSED = {
    ("vq_reward.scorer.VisualQualityScorer.as_reward", "vq_reward.rewards"),
    ("vq_reward.scorer.VisualQualityScorer.as_differentiable_reward", "vq_reward.rewards"),
    ("vq_reward.scorer.VisualQualityScorer.as_trl_reward", "vq_reward.rewards"),
    ("vq_reward.scorer.TYPE_CHECKING", "vq_reward.rewards"),
}

# module -> its module-level {name: module} dict that a dynamic import_module reads (the package's lazy exports)
LAZY_TABLES = {"vq_reward": "_EXPORTS"}

IMPORT_CALLS = {"import_module", "__import__"}
UNREADABLE = "?"  # the target of a dynamic import that names no string constant


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


class Edge(NamedTuple):
    module: str  # the importing module
    target: str  # the vq_reward module imported, or UNREADABLE
    scope: str  # where: the qualified name of the enclosing function or class, `.TYPE_CHECKING` inside such a block
    line: int


def layer(module: str) -> str | None:
    name = module.split(".")[1] if "." in module else ""
    return next((layer for layer, names in LAYERS.items() if name in names), None)


def rank(module: str) -> int:
    return list(LAYERS).index(layer(module) or "")


def resolve(target: str) -> str:
    """The module an import names (`from vq_reward import prompts` names the module vq_reward.prompts)."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def absolute(name: str, level: int, package: str) -> str:
    """`from ..x import y` in `package` -> the absolute name of `..x`."""
    if level == 0:
        return name
    base = package.split(".")[: len(package.split(".")) - level + 1]
    return ".".join([*base, name] if name else base)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def call_targets(call: ast.Call, package: str, table: tuple[str, dict[str, str]] | None) -> list[str]:
    """The modules an `import_module(...)` / `__import__(...)` call names: its string constant, or the values of
    the lazy table it reads; UNREADABLE when it names neither, nothing for an f-string outside vq_reward."""
    name = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "name"), None)
    anchor = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "package"), None)
    if isinstance(name, ast.Constant) and isinstance(name.value, str):
        dots = len(name.value) - len(name.value.lstrip("."))
        if isinstance(anchor, ast.Constant) and isinstance(anchor.value, str):
            package = anchor.value
        return [absolute(name.value[dots:], dots, package)]
    if table and isinstance(name, ast.Subscript) and isinstance(name.value, ast.Name) and name.value.id == table[0]:
        return list(table[1].values())
    if isinstance(name, ast.JoinedStr) and name.values and isinstance(name.values[0], ast.Constant):
        prefix = str(name.values[0].value)
        if not (prefix.startswith(("vq_reward", ".")) or "vq_reward".startswith(prefix)):
            return []  # e.g. f"scipy.{module}"
    return [UNREADABLE]


def lazy_table(tree: ast.Module, module: str) -> tuple[str, dict[str, str]] | None:
    """The name and value of the {name: module} dict literal that `LAZY_TABLES` names for `module`."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == LAZY_TABLES.get(module) for t in node.targets
        ):
            return LAZY_TABLES[module], ast.literal_eval(node.value)
    return None


def edges_in(module: str, source: str) -> list[Edge]:
    """Every vq_reward import in `source`, the text of `module`: statements at any depth, and import calls."""
    tree = ast.parse(source)
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    table = lazy_table(tree, module)
    callers = IMPORT_CALLS | {
        alias.asname
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "importlib"
        for alias in node.names
        if alias.name == "import_module" and alias.asname
    }
    found: list[Edge] = []

    def add(targets: list[str], scope: str, node: ast.stmt | ast.expr) -> None:
        for target in targets:
            if target == UNREADABLE or target == "vq_reward" or target.startswith("vq_reward."):
                found.append(Edge(module, target if target == UNREADABLE else resolve(target), scope, node.lineno))

    def visit(node: ast.AST, scope: str) -> None:
        if isinstance(node, ast.Import):
            add([alias.name for alias in node.names], scope, node)
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node.module or "", node.level, package)
            add([f"{base}.{alias.name}" for alias in node.names], scope, node)
        elif isinstance(node, ast.Call):
            function = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if function in callers:
                add(call_targets(node, package, table), scope, node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            scope = f"{scope}.{node.name}"
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.body:
                visit(child, f"{scope}.TYPE_CHECKING")
            for child in node.orelse:
                visit(child, scope)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(tree, module)
    return [edge for edge in found if edge.target != module]


def problems(edges: list[Edge]) -> list[str]:
    """The upward and unreadable imports among `edges`, one line each."""
    found = []
    for edge in edges:
        where = f"{edge.module} ({layer(edge.module)}), {edge.scope} line {edge.line}"
        if edge.target == UNREADABLE:
            found.append(f"{where}: a dynamic import with no string constant (name the module, or see LAZY_TABLES)")
        elif rank(edge.target) > rank(edge.module) and (edge.scope, edge.target) not in EXCUSED:
            found.append(f"{where}: imports {edge.target} ({layer(edge.target)}), a layer above")
    return found


def cycles(graph: dict[str, list[Edge]]) -> list[str]:
    """Every import cycle found by a depth-first walk, as `a -> b -> a` (excused imports are not edges)."""
    edges = {
        module: {e.target for e in found if e.target != UNREADABLE and (e.scope, e.target) not in EXCUSED}
        for module, found in graph.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found: list[str] = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                found.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                walk(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    return found


GRAPH = {module: edges_in(module, path.read_text()) for module, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert [module for module in MODULES if layer(module) is None] == [], "add it to LAYERS"


def test_imports_go_one_way():
    assert [problem for edges in GRAPH.values() for problem in problems(edges)] == []


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_every_excuse_is_used():
    used = {(edge.scope, edge.target) for edges in GRAPH.values() for edge in edges}
    assert EXCUSED - used == set(), "a stale excuse: remove it from EXCUSED"


# Each mutation adds code to a real module's source (never to the file): the check must report it.
MUTATIONS = {
    "relative import inside a function": (
        "vq_reward.readout",
        "def late():\n    from . import scorer\n",
        "imports vq_reward.scorer (front)",
    ),
    "import_module of the CLI": (
        "vq_reward.images",
        "import importlib\nimportlib.import_module('vq_reward.cli')\n",
        "(cli)",
    ),
    "__import__ of training": ("vq_reward.eval.metrics", "__import__('vq_reward.train.grpo')\n", "(train)"),
    "aliased import_module": (
        "vq_reward.prompts",
        "from importlib import import_module as load\nload('vq_reward.hub')\n",
        "vq_reward.hub (engines)",
    ),
    "relative import_module with a package": (
        "vq_reward.parsing",
        "import importlib\nimportlib.import_module('.smoke', package='vq_reward')\n",
        "vq_reward.smoke (engines)",
    ),
    "dynamic import_module": (
        "vq_reward.images",
        "import importlib\ndef load(name):\n    return importlib.import_module(f'vq_reward.{name}')\n",
        "a dynamic import with no string constant",
    ),
    "two levels up from a subpackage": (
        "vq_reward.data.jsonl",
        "from ..cli import options\n",
        "vq_reward.cli.options (cli)",
    ),
    "the package root's exports from the base": (
        "vq_reward.readout",
        "from vq_reward import VisualQualityScorer\n",
        "imports vq_reward (front)",
    ),
    "an engine importing the front": ("vq_reward.smoke.tiny", "from vq_reward.scorer import Rating\n", "(front)"),
    "the base importing an engine": ("vq_reward.loading", "import vq_reward.backends.hf as hf\n", "(engines)"),
    "a TYPE_CHECKING import upward": (
        "vq_reward.images",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vq_reward.scorer import Rating\n",
        "vq_reward.images.TYPE_CHECKING",
    ),
    "a shortcut's name outside the scorer": (
        "vq_reward.hub",
        "def as_reward():\n    from vq_reward.rewards import QualityReward\n",
        "vq_reward.hub.as_reward line",
    ),
    "a module-level function named like the shortcut": (
        "vq_reward.scorer",
        "def as_reward():\n    from vq_reward.rewards import QualityReward\n",
        "vq_reward.scorer.as_reward line",
    ),
    "data importing batch": (
        "vq_reward.data.rows",
        "from vq_reward.batch import results\n",
        "vq_reward.batch (batch)",
    ),
}


@pytest.mark.parametrize("module, code, expected", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_the_check_catches(module, code, expected):
    source = MODULES[module].read_text() + "\n\n" + textwrap.dedent(code)
    assert problems(GRAPH[module]) == []  # so what is caught comes from the mutation
    caught = problems(edges_in(module, source))
    assert any(expected in problem for problem in caught), caught


def test_the_check_catches_a_cycle_behind_a_lazy_relative_import():
    source = MODULES["vq_reward.readout"].read_text() + "\n\ndef late():\n    from . import scorer\n"
    found = cycles({**GRAPH, "vq_reward.readout": edges_in("vq_reward.readout", source)})
    assert any("vq_reward.readout -> vq_reward.scorer" in cycle for cycle in found), found


def test_the_check_sees_what_it_must_allow():
    # The scorer's shortcuts and the package's lazy exports are found (so excusing them is not a blind spot), and a
    # non-vq_reward dynamic import (eval's f"scipy.{module}") is not an edge.
    shortcuts = {edge.scope for edge in GRAPH["vq_reward.scorer"] if edge.target == "vq_reward.rewards"}
    assert {scope for scope, _ in EXCUSED} <= shortcuts
    assert {edge.target for edge in GRAPH["vq_reward"] if edge.scope == "vq_reward.__getattr__"} >= {
        "vq_reward.scorer"
    }
    assert [edge for edge in GRAPH["vq_reward.eval.metrics"] if edge.target == UNREADABLE] == []


def export_mismatches(source: str) -> list[str]:
    """Where vq_reward/__init__.py's `__all__`, lazy export table and TYPE_CHECKING imports (given as `source`)
    disagree, or name something their module does not define."""
    tree = ast.parse(source)
    listed: list[str] = []
    checked: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            listed = ast.literal_eval(node.value)
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom) and statement.module, ast.unparse(statement)
                checked.update({alias.asname or alias.name: statement.module for alias in statement.names})
    lazy = (lazy_table(tree, "vq_reward") or ("", {}))[1]
    return [
        *(f"{name}: in __all__, not in _EXPORTS" for name in sorted(set(listed) - {*lazy, "__version__"})),
        *(f"{name}: in _EXPORTS, not in __all__" for name in sorted(set(lazy) - set(listed))),
        *(
            f"{name}: {module} in _EXPORTS, {checked.get(name)} under TYPE_CHECKING"
            for name, module in lazy.items()
            if checked.get(name) != module
        ),
        *(f"{name}: under TYPE_CHECKING, not in _EXPORTS" for name in sorted(set(checked) - set(lazy))),
        *(f"{name}: {module} does not define it" for name, module in lazy.items() if not defines(module, name)),
    ]


def defines(module: str, name: str) -> bool:
    """Whether `module` binds `name` at its top level (class, function, assignment or import)."""
    if module not in MODULES:
        return False
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            bound = {node.name}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound = {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound = {alias.asname or alias.name for alias in node.names}
        else:
            continue
        if name in bound:
            return True
    return False


def test_package_exports_agree():
    assert export_mismatches(MODULES["vq_reward"].read_text()) == []


EXPORT_MUTATIONS = {
    "a name left out of __all__": ('    "Rating",\n', "", "Rating: in _EXPORTS, not in __all__"),
    "a table entry pointing at the wrong module": (
        '"Rating": "vq_reward.scores"',
        '"Rating": "vq_reward.readout"',
        "Rating: vq_reward.readout does not define it",
    ),
    "a TYPE_CHECKING import left out": (
        "NonFiniteScoreError, Rating",
        "NonFiniteScoreError",
        "Rating: vq_reward.scores in _EXPORTS",
    ),
}


@pytest.mark.parametrize("old, new, expected", EXPORT_MUTATIONS.values(), ids=EXPORT_MUTATIONS.keys())
def test_the_export_check_catches(old, new, expected):
    source = MODULES["vq_reward"].read_text()
    assert old in source
    caught = export_mismatches(source.replace(old, new, 1))
    assert any(expected in mismatch for mismatch in caught), caught


@pytest.mark.parametrize("command", [[], ["score"], ["make-tiny"], ["distort"], ["prepare-data"], ["eval"], ["serve"]])
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
