"""The shape of the code: only a script's main ends the process, and the imports flow one way."""

import ast
import os

from conftest import ROOT

SCRIPTS = {"trainstage1", "trainstage2", "test", "visualization", "confusionMatrix", "export"}
SCRIPTS |= {"knn", "pictures"}


def project_modules():
    """{module name: parsed source} of the repository's top-level Python files."""
    modules = {}
    for name in sorted(os.listdir(ROOT)):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, name)) as file:
                modules[name[:-3]] = ast.parse(file.read())
    return modules


def test_only_the_main_wrapper_ends_the_process():
    """SystemExit and sys.exit appear in errors.py alone; everything else raises an error."""
    for name, tree in project_modules().items():
        for node in ast.walk(tree):
            names = {node.id} if isinstance(node, ast.Name) else set()
            if isinstance(node, ast.Attribute):
                names = {node.attr}
            if names & {"SystemExit", "exit", "_exit"} and name != "errors":
                raise AssertionError(f"{name}.py line {node.lineno} ends the process")


def imports(tree, known):
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found & known


def test_imports_have_no_cycles_and_no_module_imports_a_script():
    modules = project_modules()
    graph = {name: imports(tree, set(modules)) for name, tree in modules.items()}
    for name, imported in graph.items():
        assert not imported & SCRIPTS, f"{name}.py imports a script: {imported & SCRIPTS}"
    floors = {}

    def floor(name, path=()):
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name not in floors:
            floors[name] = 1 + max(
                (floor(other, (*path, name)) for other in graph[name]), default=-1
            )
        return floors[name]

    for name in graph:
        floor(name)
    assert floors["errors"] == 0 and max(floors[script] for script in SCRIPTS) <= 5
    # The data flows one way: the raw splits never reach up to the loaders built on them.
    assert not graph["splits"] & {"loaddataset", "devicedata", "workerdata"}
    assert not graph["devicedata"] & {"loaddataset", "workerdata"}
    assert not graph["workerdata"] & {"loaddataset", "devicedata"}
