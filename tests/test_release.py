"""bench/release.py, the release a GPU run makes, end to end on the CPU at its tiny size."""

import importlib.util
import json
import os
import tarfile

import pytest

from conftest import ROOT, write_image_folder


@pytest.mark.long
def test_the_release_plans_trains_measures_exports_and_checks_at_tiny_size(tmp_path, capsys):
    images = write_image_folder(tmp_path / "cifar10-jpeg")
    tarball = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(images, arcname="cifar10-jpeg")
    spec = importlib.util.spec_from_file_location(
        "release", os.path.join(ROOT, "bench", "release.py")
    )
    release = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(release)
    out = tmp_path / "release"
    release.main(["--size", "tiny", "--data", str(tarball), "--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert f"extracted {tarball} into {out / 'data' / 'cifar10-jpeg'}" in printed
    plan = next(line for line in printed.splitlines() if line.startswith("plan: "))
    assert plan.startswith("plan: ResNet-18, batch 8, 1 epochs of 3 steps at ")
    (card_path,) = out.glob("simclr-resnet18-folder-*.json")
    card = json.loads(card_path.read_text())
    assert (out / card["weights"]["file"]).is_file()
    kinds = {entry["kind"] for entry in card["evaluations"]}
    assert kinds == {"knn monitor", "knn", "linear"}
    linear = next(entry for entry in card["evaluations"] if entry["kind"] == "linear")
    assert linear["validation_fraction"] == 0.1 and linear["validation_top1"] is not None
    checked = [line for line in printed.splitlines() if "top-1 on h" in line]
    assert len(checked) == 2 and all(": agree within" in line for line in checked)
    assert printed.splitlines()[-1].startswith(f"release in {out}: {card_path.name}")
