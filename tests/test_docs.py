"""The documentation: README.md read in five minutes, every relative link of it and of docs/
resolving to a file (and to a heading, where it names one), and every docs page listed in it."""

import os
import re

from conftest import ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")
README_MAX_LINES = 250
BENCHMARKS_MAX_LINES = 400


def pages():
    """README.md, BENCHMARKS.md and every docs/*.md, as paths."""
    docs = os.path.join(ROOT, "docs")
    found = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "BENCHMARKS.md")]
    return found + sorted(
        os.path.join(docs, name) for name in os.listdir(docs) if name.endswith(".md")
    )


def anchors(path):
    """The anchors of a markdown file's headings, as GitHub makes them."""
    with open(path) as file:
        headings = [line.lstrip("#").strip() for line in file if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_resolves():
    broken = []
    for page in pages():
        with open(page) as file:
            text = file.read()
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(resolved) or (anchor and anchor not in anchors(resolved)):
                broken.append(f"{os.path.relpath(page, ROOT)}: {target}")
    assert not broken, broken


def test_the_readme_is_short_and_lists_every_docs_page():
    with open(os.path.join(ROOT, "README.md")) as file:
        readme = file.read()
    assert len(readme.splitlines()) <= README_MAX_LINES
    listed = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
    on_disk = {name for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md")}
    assert listed == on_disk
    sections = re.findall(r"(?m)^## (.+)$", readme)
    assert sections == [
        "Quickstart", "What a run writes", "Results", "The code", "More", "Tests", "Dependencies",
    ]  # fmt: skip


FENCED_BLOCK = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)
# The scripts that act on a run folder: left without --run-dir, each takes the newest run
RUN_SCRIPTS = ("trainstage1", "trainstage2", "test", "visualization", "confusionMatrix", "knn")
RUN_SCRIPTS += ("pictures", "export")
RUN_DIR = re.compile(r"--run-dir[ =](\S+)")


def run_commands(block):
    """The commands of a fenced block that run a run-folder script, a continued line as one."""
    lines = block.replace("\\\n", " ").splitlines()
    scripts = re.compile(rf"(^|\s)({'|'.join(RUN_SCRIPTS)})\.py\b")
    return [
        command.strip()
        for line in lines
        if not line.strip().startswith("#")
        for command in line.split("&&")
        if scripts.search(command)
    ]


def test_every_documented_block_that_chains_commands_on_a_run_names_one_run_dir():
    """A block of several commands, read by a later one, pins its run: left to "the newest run",
    a second terminal starting runs meanwhile would give each line another run."""
    unpinned = []
    docs = os.path.join(ROOT, "docs")
    paths = [os.path.join(ROOT, "README.md")]
    paths += sorted(os.path.join(docs, name) for name in os.listdir(docs) if name.endswith(".md"))
    for path in paths:
        with open(path) as file:
            blocks = FENCED_BLOCK.findall(file.read())
        for block in blocks:
            commands = run_commands(block)
            if len(commands) < 2 or all("trainstage1.py" in command for command in commands):
                continue  # one command, or stage ones side by side: nothing reads another's run
            run_dirs = {tuple(RUN_DIR.findall(command)) for command in commands}
            if len(run_dirs) != 1 or len(next(iter(run_dirs))) != 1:
                unpinned.append(f"{os.path.relpath(path, ROOT)}: {commands}")
    assert unpinned == []


# Words about how the repository was made rather than how to use it: a folder beside the clone,
# a machine called by a nickname, an issue tracker's numbers, when and in what sittings the work
# was done. Written so that this file's own source does not hold them; pytest's fixture scope
# and an image's name ("cifar10 test #0") are not among them.
BUILD_WORDS = re.compile(
    r"\.\./shared|\bCPU-[0-9X]\b|\bissue ?#?\d+|(?<![\w&/(\[])(?<!test )#\d+\b"
    r"|(?<!scope=\")\bsessions?\b|this[ ]project|project's[ ]machine|\b(?:even|morn)ing\b",
    re.I,
)


def read_by_users():
    """What someone who cloned the repository reads: README.md, BENCHMARKS.md, docs/, bench/,
    the code, the tests, the receipts and the CI script."""
    found = pages() + [os.path.join(ROOT, ".ci", "run")]
    for folder in ("", "bench", "simclr", "tests", "receipts"):
        directory = os.path.join(ROOT, folder)
        found += [
            os.path.join(directory, name)
            for name in sorted(os.listdir(directory))
            if name.endswith((".py", ".sh", ".json")) or folder == "bench"
        ]
    return found


def test_what_a_user_reads_speaks_of_the_repository_not_of_how_it_was_built():
    found = []
    for path in read_by_users():
        with open(path) as file:
            for number, line in enumerate(file, start=1):
                found += [
                    f"{os.path.relpath(path, ROOT)}:{number}: {match.group()}"
                    for match in BUILD_WORDS.finditer(line)
                ]
    assert not found, found


def test_benchmarks_is_a_page_of_current_figures():
    """One section per question a user asks, not the history of each figure (git log keeps it)."""
    with open(os.path.join(ROOT, "BENCHMARKS.md")) as file:
        lines = file.read().splitlines()
    assert len(lines) <= BENCHMARKS_MAX_LINES
