"""Receipts for the README's figures (receipts/*.json) and reproduce.py, which runs one again."""

import json
import os
import re

import pytest

from conftest import ROOT, run_main, write_image_folder

RECEIPTS = os.path.join(ROOT, "receipts")


def results_rows():
    """The rows of README's Results table, as their text."""
    with open(os.path.join(ROOT, "README.md")) as file:
        readme = file.read()
    section = readme[readme.index("## Results") : readme.index("## The code")]
    return [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][
        1:
    ]


def test_every_row_of_the_results_links_a_receipt_that_says_how_to_reproduce_it():
    linked = []
    for row in results_rows():
        found = re.findall(r"\[receipt\]\((receipts/[\w-]+\.json)\)", row)
        assert len(found) == 1, row
        linked.append(found[0])
        with open(os.path.join(ROOT, found[0])) as file:
            receipt = json.load(file)
        assert receipt["commands"] and receipt["row"] in row
        if "why_not" not in receipt:  # reproducible here: every figure read from a file
            assert receipt["cpu_minutes"] <= 20 and receipt["commit"] and receipt["machine"]
            for figure in receipt["figures"]:
                assert figure["file"] and ("key" in figure or "column" in figure)
                assert figure["value"] and figure["test_images"]
    assert sorted(linked) == sorted(f"receipts/{name}" for name in os.listdir(RECEIPTS))


@pytest.mark.long
def test_reproduce_runs_a_receipt_again_and_compares_its_figures(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = write_image_folder(tmp_path / "images")
    receipt = {
        "row": "a random ResNet-18's kNN on a tiny folder",
        "commands": [
            "python trainstage1.py --dataset folder --data-dir DATA_DIR --arch resnet18 --epochs 1 "
            "--batch-size 8 --image-size 16 --knn-every 0 --precision fp32 --workers 0 "
            "--device cpu --run-dir runs/tiny",
            "python knn.py --run-dir runs/tiny --random --precision fp32 --workers 0 --device cpu",
        ],
        "figures": [
            {"name": "kNN top-1", "value": 50.0, "file": "runs/tiny/knn_h_random.json",
             "key": "knn_top1", "test_images": 9},
        ],
        "machine": "this test's",
    }  # fmt: skip
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(receipt))
    argv = [path, "--data-dir", images, "--work-dir", tmp_path / "again"]
    run_main("reproduce", argv, capsys)
    (first,) = (tmp_path / "again").iterdir()
    now = json.loads((first / "reproduced.json").read_text())["figures"][0]["now"]
    # the same figure twice: as it is now, and 40 points away
    away = now - 40 if now > 50 else now + 40
    receipt["figures"] = [receipt["figures"][0] | {"value": value} for value in (now, away)]
    path.write_text(json.dumps(receipt))
    result, out, _ = run_main("reproduce", argv, capsys)
    assert result == 1
    for value, verdict in ((now, "agree"), (away, "DISAGREE")):
        tolerance = 200 * ((value / 100) * (1 - value / 100) / 9) ** 0.5
        assert (
            f"receipt {value:.2f}% (this test's), now {now:.2f}%: {verdict} within "
            f"{tolerance:.2f} points" in out
        )
    skipped = tmp_path / "gpu.json"
    skipped.write_text(json.dumps({"commands": ["python trainstage1.py"], "why_not": "a GPU"}))
    code, out, _ = run_main("reproduce", [skipped], capsys)
    assert code == 0 and out.strip() == f"{skipped}: not reproduced here: a GPU"
