"""An exported encoder's card, check.py that measures it again, and torch.hub's loading of it."""

import json
import shutil

import numpy as np
import pytest
import torch

import net
from simclr import cards, checkpoints, rundir
from conftest import CLASSES, ROOT, assert_documented, draw, load_script, run_main

FAST = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]
TEST_PER_CLASS = 10  # 30 queries: one query is 3.3 points, so a figure raised by 5 shows


def labelled_folder(root):
    """DIR/train/CLASS/* (8 each) and DIR/test/CLASS/* (TEST_PER_CLASS each), three classes."""
    rng = np.random.default_rng(1)
    for split, count in (("train", 8), ("test", TEST_PER_CLASS)):
        for class_index, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for number in range(count):
                draw(class_index, rng).save(root / split / name / f"{number}.png")
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A one-epoch run on its own folder, measured by knn.py and a linear probe, then exported
    -> (the run folder, the data folder, the weights' path, the card's path)."""
    root = tmp_path_factory.mktemp("card")
    data_dir, run_dir = labelled_folder(root / "images"), root / "run"
    stage1 = ["--dataset", "folder", "--data-dir", data_dir, "--arch", "resnet18", "--epochs", 1]
    stage1 += ["--batch-size", 8, "--image-size", 16, "--knn-every", 1, "--run-dir", run_dir]
    for script, argv in (
        ("trainstage1", [*stage1, *FAST]),
        ("knn", ["--run-dir", run_dir, "--knn-k", 5, *FAST]),
        ("trainstage2", ["--run-dir", run_dir, "--epochs", 2, "--batch-size", 8, *FAST]),
        ("export", ["--run-dir", run_dir]),
    ):
        load_script(script).main([str(arg) for arg in argv])
    (weights,) = run_dir.glob("simclr-resnet18-folder-*.pth")
    return run_dir, data_dir, weights, weights.with_suffix(".json")


def test_the_card_is_read_from_the_run_and_names_the_weights_by_their_content(exported):
    run_dir, data_dir, weights, card_path = exported
    card = json.loads(card_path.read_text())
    sha256 = cards.sha256_of(weights)
    assert weights.name == f"simclr-resnet18-folder-{sha256[: cards.HASH_DIGITS]}.pth"
    assert sha256.startswith(torch.hub.HASH_REGEX.search(weights.name).group(1))  # check_hash's
    assert card["weights"]["sha256"] == sha256 and card["weights"]["head_included"] is False
    assert card["data"]["images_trained_on"] == {"training": 24, "unlabelled": 0}
    assert card["data"]["test_images_trained_on"] == 0 and card["data"]["dataset"] == "folder"
    assert card["pretraining"]["epochs_trained"] == 1 and card["pretraining"]["finished"]
    knn = rundir.KnnResult.read(run_dir, "h")
    results = rundir.Results.read(run_dir)
    kinds = {entry["kind"]: entry for entry in card["evaluations"]}
    assert set(kinds) == {"knn monitor", "knn", "linear"}
    assert kinds["knn"]["top1"] == round(knn.knn_top1, 3) and kinds["knn"]["k"] == 5
    assert kinds["knn"]["query_images"] == 3 * TEST_PER_CLASS
    assert kinds["linear"]["top1"] == results.top1 and kinds["linear"]["frozen"] is True
    assert kinds["linear"]["epochs"] == 2 and kinds["linear"]["test_images"] == 30
    config_json = json.loads((run_dir / "config.json").read_text())
    made = card["made"]
    assert (made["torch"], made["torchvision"]) == (torch.__version__, config_json["torchvision"])
    assert made["git_commit"] == (config_json["git_commit"] or None)
    assert made["device"] == "cpu" and made["precision"] == "fp32" and made["licence"] is None
    assert made["training_seconds"] > 0


@pytest.mark.long
def test_check_agrees_with_the_card_and_refuses_a_changed_card_weights_or_dataset(
    exported, tmp_path, capsys
):
    run_dir, data_dir, weights, card_path = exported
    code, out, errors = run_main("check", [card_path, *FAST[:4]], capsys)
    assert code == 0 and errors == [], out
    lines = out.splitlines()
    assert lines[0] == f"{card_path}: weights {weights.name} are the card's (sha256)"
    assert len([line for line in lines if ": agree within 3.33 points" in line]) == 2

    # --linear: the probe trained again as the card recorded it, on a run folder made of the card
    code, out, errors = run_main("check", [card_path, "--linear", *FAST[:4]], capsys)
    probe = [line for line in out.splitlines() if line.startswith("linear top-1 on h")]
    linear = next(entry for entry in json.loads(card_path.read_text())["evaluations"]
                  if entry["kind"] == "linear")  # fmt: skip
    assert (
        code == 0
        and errors == []
        and probe
        == [
            f"linear top-1 on h (2 epochs, cached, 30 test images): card {linear['top1']:.2f}%, "
            f"measured {linear['top1']:.2f}%: agree within 3.33 points (the same images and "
            f"weights, "
            f"in fp32 as the card)"
        ]
    )

    # a kNN figure raised by 5 points: measured again, it disagrees
    card = json.loads(card_path.read_text())
    raised = tmp_path / card_path.name
    for entry in card["evaluations"]:
        if entry["kind"] == "knn":
            entry["top1"] += 5
        if entry["kind"] == "linear":  # and a probe's figure moved by 40
            entry["top1"] += 40 if entry["top1"] < 50 else -40
    raised.write_text(json.dumps(card))
    shutil.copy(weights, tmp_path / weights.name)
    code, out, _ = run_main("check", [raised, "--linear", *FAST[:4]], capsys)
    disagree = [line.split(":")[0] for line in out.splitlines() if "DISAGREE within 3.33" in line]
    assert code == 1 and disagree == [
        "knn top-1 on h (30 queries, k=5)",
        "linear top-1 on h (2 epochs, cached, 30 test images)",
    ]

    # one byte of the weights flipped
    flipped = bytearray(weights.read_bytes())
    flipped[len(flipped) // 2] ^= 1
    (tmp_path / weights.name).write_bytes(bytes(flipped))
    code, _, errors = run_main("check", [raised, *FAST[:4]], capsys)
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith(f"error: weights {tmp_path / weights.name} are not the card's")
    assert_documented(errors[0])

    # the dataset gone, a card without a field, no weights
    moved = tmp_path / "moved"
    code, _, errors = run_main("check", [card_path, "--data-dir", moved, *FAST[:4]], capsys)
    assert code == 2 and errors == [
        f"error: {moved}/train does not exist: a folder dataset needs {moved}/train/CLASS/* and "
        f"{moved}/test/CLASS/*"
    ]
    del card["weights"]["sha256"]
    raised.write_text(json.dumps(card))
    code, _, errors = run_main("check", [raised, *FAST[:4]], capsys)
    assert code == 2 and errors == [
        f"error: card {raised} has no weights.sha256: export the encoder again with export.py"
    ]
    assert_documented(errors[0])
    elsewhere = tmp_path / "no-weights" / card_path.name
    elsewhere.parent.mkdir()
    shutil.copy(card_path, elsewhere)
    code, _, errors = run_main("check", [elsewhere, *FAST[:4]], capsys)
    assert code == 2 and errors[0].startswith(f"error: weights {elsewhere.parent / weights.name}")
    assert_documented(errors[0])
    # weights at a URL are fetched beside the card first
    code, out, _ = run_main("check", [elsewhere, "--weights", weights.as_uri(), *FAST[:4]], capsys)
    assert code == 0 and (elsewhere.parent / weights.name).read_bytes() == weights.read_bytes()


def test_torch_hub_loads_the_exported_encoder_with_the_same_features(exported, monkeypatch):
    run_dir, _, weights, card_path = exported
    encoder = torch.hub.load(ROOT, "encoder", source="local", card=str(card_path))
    assert type(encoder).__module__ == "torchvision.models.resnet" and not encoder.training
    checkpoint = torch.load(run_dir / checkpoints.STAGE_ONE_FILE, weights_only=True)
    model = net.from_stage_one(checkpoint, "stage1_last.pth").eval()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(encoder(images), model.encoder(images))
    # nothing published yet: said in one line; a published entry loads through its URLs
    with pytest.raises(RuntimeError, match="simclr_resnet18_cifar10 is not published"):
        torch.hub.load(ROOT, "simclr_resnet18_cifar10", source="local")
    hubconf = load_script("hubconf")
    assert hubconf.dependencies == ["torch", "torchvision"]
    with pytest.raises(RuntimeError, match="on folder, not simclr_resnet18_cifar10's"):
        hubconf.simclr_resnet18_cifar10(card=str(card_path))
    published = run_dir.parent / "published.json"
    entry = {"card_url": card_path.as_uri(), "weights_url": weights.as_uri()}
    published.write_text(json.dumps({"simclr_resnet18_cifar10": entry}))
    monkeypatch.setattr(hubconf, "PUBLISHED", str(published))
    monkeypatch.setenv("TORCH_HOME", str(run_dir.parent / "hub"))
    downloaded = hubconf.simclr_resnet18_cifar10()
    with torch.no_grad():
        assert torch.equal(downloaded(images), model.encoder(images))
    assert not hubconf.simclr_resnet18_cifar10(pretrained=False).conv1.stride[0] - 1
