"""The shape of the code: the scripts and the three modules the design card names on top, one
package of internals beneath them that never imports them, imports that flow one way, and only a
script's main ends the process."""

import ast
import os

from conftest import ROOT, load_script

SCRIPTS = {"trainstage1", "trainstage2", "test", "visualization", "confusionMatrix", "export"}
SCRIPTS |= {"knn", "pictures", "sweep", "check", "reproduce"}
TOP_LEVEL = SCRIPTS | {"config", "net", "loaddataset"}
TOP_LEVEL |= {"hubconf"}  # torch.hub reads its entry points from the repository's root alone
PACKAGE = "simclr"


def project_modules():
    """{module name: parsed source} of the top-level Python files ("net") and of the package's
    ("simclr.datasets")."""
    modules = {}
    for folder, prefix in ((ROOT, ""), (os.path.join(ROOT, PACKAGE), f"{PACKAGE}.")):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py") and name != "__init__.py":
                with open(os.path.join(folder, name)) as file:
                    modules[prefix + name[:-3]] = ast.parse(file.read())
    return modules


def test_the_top_level_holds_the_scripts_and_the_design_cards_modules_alone():
    top_level = {name for name in project_modules() if "." not in name}
    assert top_level == TOP_LEVEL
    assert os.path.isfile(os.path.join(ROOT, PACKAGE, "__init__.py"))


def test_only_the_main_wrapper_ends_the_process():
    """SystemExit and sys.exit appear in simclr/errors.py alone; everything else raises an error."""
    for name, tree in project_modules().items():
        for node in ast.walk(tree):
            names = {node.id} if isinstance(node, ast.Name) else set()
            if isinstance(node, ast.Attribute):
                names = {node.attr}
            if names & {"SystemExit", "exit", "_exit"} and name != f"{PACKAGE}.errors":
                raise AssertionError(f"{name} line {node.lineno} ends the process")


def imports(tree, known):
    """The project modules a module imports: `import net`, `from simclr import datasets, rundir`
    and `from simclr.errors import InputError` alike."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found & known


def test_imports_point_down_only_and_have_no_cycles():
    modules = project_modules()
    graph = {name: imports(tree, set(modules)) for name, tree in modules.items()}
    for name, imported in graph.items():
        assert not imported & SCRIPTS, f"{name} imports a script: {imported & SCRIPTS}"
        if name.startswith(f"{PACKAGE}."):
            up = imported & TOP_LEVEL
            assert not up, f"{name} imports {up} from the top level: the package must not"
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
    assert floors[f"{PACKAGE}.errors"] == 0
    # The data flows one way: the raw splits never reach up to the loaders built on them.
    datasets, device, workers = (
        f"{PACKAGE}.{name}" for name in ("datasets", "loaders_device", "loaders_workers")
    )
    assert not graph[datasets] & {"loaddataset", device, workers}
    assert not graph[device] & {"loaddataset", workers}
    assert not graph[workers] & {"loaddataset", device}
    # The settings stand beside the network and the loading, which each stage hands its plan:
    # neither asks config again, and config builds no network.
    assert not graph["config"] & {"net", "loaddataset"}
    assert not graph["loaddataset"] & {"config", "net"} and "config" not in graph["net"]


def test_submitit_is_used_through_its_public_names_alone():
    """No import or attribute of submitit whose name starts with an underscore: a private name can
    change in any submitit release, and the sweep would break on a user's newer one."""
    private = []
    for name, tree in project_modules().items():
        bound, paths = {"submitit"}, []  # the names this module gives submitit or its parts
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("submitit"):
                bound |= {alias.asname or alias.name for alias in node.names}
                paths += [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                paths += [alias.name for alias in node.names if alias.name.startswith("submitit")]
        attributes = [
            ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Attribute)
        ]
        paths += [path for path in attributes if path.split(".")[0] in bound]
        private += [f"{name}: {path}" for path in paths if "._" in path]
    assert not private, private


def test_every_bug_the_audit_puts_back_names_code_that_is_there_once():
    """bench/audit_mutations.py edits the code by its text: a change of that text (a rename, a
    move) would leave a bug that can no longer be put back, found only when the audit runs."""
    audit = load_script(os.path.join("bench", "audit_mutations"))
    stale = []
    for name, (path, text, _, tests) in audit.BUGS.items():
        with open(os.path.join(ROOT, path)) as file:
            if file.read().count(text) != 1:
                stale.append(f"{name}: {path}")
        for test in tests.split():
            test_file, _, test_name = test.partition("::")
            with open(os.path.join(ROOT, test_file)) as file:
                if f"def {test_name.split('[')[0]}(" not in file.read():
                    stale.append(f"{name}: {test}")
    assert not stale, stale
