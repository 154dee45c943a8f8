"""The package's import graph follows its layers (README, "Module map and the layer rule"):

    front end (cli, studio)  ->  stages  ->  model  ->  kernels  ->  shared helpers

A module imports only from layers below its own, or from its own layer without a cycle; stages import each other
only where one reads what an upstream stage publishes; no library module imports the CLI. Every import counts,
including those inside functions. A new module fails here until it is given a layer. And no function is longer
than a screen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pianomuse"

LAYERS = {  # lowest first; module names without the leading "pianomuse."
    "helpers": "(package) audio batching config devices files logs metrics optim remi report run_log sampling "
    "scoring startup tokenizer",
    "kernels": "kernels kernels.build kernels.checks kernels.token_mix kernels.toolchain kernels.wkv7 kernels.wkv_keys",
    "model": "model decode_step transformer ngram decoding models checkpoint flops",
    "stages": "maestro tokens augment windows kernel_record train complete evaluate probe",
    "front end": "cli studio",
}
LAYERS = {
    layer: {"pianomuse" if name == "(package)" else f"pianomuse.{name}" for name in names.split()}
    for layer, names in LAYERS.items()
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}
# The only imports between stages: each reads what an upstream stage publishes.
STAGE_CONTRACTS = {
    ("pianomuse.tokens", "pianomuse.maestro"),  # the manifest reader
    ("pianomuse.augment", "pianomuse.tokens"),  # the token-shard schema it writes too
    ("pianomuse.evaluate", "pianomuse.complete"),  # the completion engine
    ("pianomuse.probe", "pianomuse.complete"),  # the completion engine
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def pianomuse_imports(path: Path) -> set[str]:
    """The pianomuse modules a file imports anywhere in it (`from pianomuse.x import y` counts y when y is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}: a relative import; the package imports itself by absolute names")
        else:
            continue
        found |= {name for name in names if name.split(".")[0] == "pianomuse" and name in MODULES}
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {module: pianomuse_imports(path) for module, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert set(MODULES) == set(RANK), "give each new module its layer in LAYERS (and in the README's module map)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_the_layers(module):
    upward = {target for target in GRAPH[module] if RANK[target] > RANK[module]}
    assert not upward, f"{module} imports {sorted(upward)} from a layer above it"


def test_stages_import_each_other_only_through_contracts():
    stages = LAYERS["stages"]
    edges = {(module, target) for module in stages for target in GRAPH[module] if target in stages}
    assert edges <= STAGE_CONTRACTS, f"stage imports a sibling: {sorted(edges - STAGE_CONTRACTS)}"


def test_no_import_cycle():
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module) :] + [module]))
        if module not in done:
            for target in sorted(GRAPH[module]):
                visit(target, [*path, module])
            done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


def test_kernels_import_nothing_above_them():
    # The rule of issue 12: the ops layer never reaches up to the model it serves.
    for module in LAYERS["kernels"]:
        assert all(RANK[target] <= RANK[module] for target in GRAPH[module]), module


def test_no_library_module_or_workflow_script_imports_the_cli():
    importers = [name for name, targets in GRAPH.items() if "pianomuse.cli" in targets]
    scripts = sorted((REPO / "workflow" / "scripts").glob("*.py"))
    importers += [str(path) for path in scripts if "pianomuse.cli" in pianomuse_imports(path)]
    assert not importers


def test_the_checker_sees_a_back_edge(tmp_path):
    # The checks above pass only if the parser finds imports at all: this one goes up, inside a function.
    source = tmp_path / "fake.py"
    source.write_text("def f():\n    from pianomuse.model import RWKV7\n    import pianomuse.cli\n")
    assert pianomuse_imports(source) == {"pianomuse.model", "pianomuse.cli"}
    assert RANK["pianomuse.model"] > RANK["pianomuse.kernels.wkv7"]
    assert {"pianomuse.kernels.build"} <= GRAPH["pianomuse.kernels.wkv7"]  # its lazy import is seen


MAX_FUNCTION_LINES = 60  # a function you can read on one screen


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_is_longer_than_a_screen(module):
    tree = ast.parse(MODULES[module].read_text())
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    long = {f.name: f.end_lineno - f.lineno + 1 for f in functions if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES}
    assert not long, f"{module}: split {long} (lines each)"
