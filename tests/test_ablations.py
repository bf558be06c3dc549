"""The knobs of the paper's ablations: --head, --color-strength, --augment,
--one-branch in stage one, on both data paths, and --features h|z in stage two, knn.py and
pictures.py. Each test names the behaviour its knob promises; a knob that is read but not honoured
fails it."""

import json
import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from conftest import (
    CLASSES,
    assert_documented,
    copy_of_run,
    load_script,
    run_main,
    stage_one_data,
    results_of,
)
from PIL import Image

import config
import net
from simclr import augment, errors, evaluate
from simclr import augment_batched as BA

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def batched_views(spec, images, seed=0):
    return BA.BatchSimCLRAugmentation(32, MEAN, STD, spec)(
        images, torch.Generator().manual_seed(seed)
    )


def normalised(images):
    return TF.normalize(images, MEAN, STD)


def test_a_head_of_none_gives_z_equal_to_h_and_linear_one_layer():
    none = net.SimCLRNet("resnet18", 128, "cifar", proj_layers=0).eval()
    x = torch.rand(4, 3, 32, 32)
    h, z = none(x)
    assert z.shape == (4, 512) and torch.equal(z, h)
    assert not [key for key in none.state_dict() if key.startswith("projector")]
    linear = net.SimCLRNet("resnet18", 128, "cifar", proj_layers=1)
    assert [key for key in linear.state_dict() if key.startswith("projector")] == [
        "projector.0.weight",
        "projector.0.bias",
    ]
    parse = lambda *argv: config.with_dataset_defaults(config.parse(config.Pretrain, list(argv)))  # noqa: E731
    assert parse("--head", "none").proj_layers == 0
    assert parse("--head", "linear").proj_layers == 1
    assert parse().proj_layers == 2 and parse("--proj-layers", "3").proj_layers == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["--proj-layers", "1"],
        ["--head", "linear", "--proj-layers", "2"],
        ["--head", "none", "--proj-layers", "1"],
    ],
)
def test_a_head_and_a_depth_that_disagree_are_refused_in_one_line(argv):
    with pytest.raises(errors.InputError) as refused:
        config.with_dataset_defaults(config.parse(config.Pretrain, argv))
    assert_documented(f"error: {refused.value}")


@pytest.mark.parametrize("argv", [["--augment", "crop,rotate"], ["--augment", ""]])
def test_an_unknown_or_empty_augment_list_is_refused_in_one_line(argv):
    with pytest.raises(errors.InputError) as refused:
        config.augmentation_ops(config.parse(config.Pretrain, argv))
    assert_documented(f"error: {refused.value}")


def test_the_jitter_follows_the_colour_strength():
    spec = augment.spec_of(augment.DEFAULT_OPS, 0.25, one_branch=False)
    assert spec.jitter == pytest.approx((0.2, 0.2, 0.2, 0.05))
    found = augment.simclr_augmentation(32, MEAN, STD, spec).transforms
    jitter = next(t for step in found if isinstance(step, T.RandomApply) for t in step.transforms)
    assert jitter.brightness == pytest.approx((0.8, 1.2)) and jitter.hue == pytest.approx(
        (-0.05, 0.05)
    )


def view_means_both_paths(spec, image, views):
    """The mean value of views of one image, unnormalised, on the batched path and on the
    per-image (torchvision) path: two samples of one distribution if the paths agree."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    batched = batched_views(spec, pixels.expand(views, -1, -1, -1).contiguous())
    torch.manual_seed(0)
    transform = augment.simclr_augmentation(32, MEAN, STD, spec)
    per_image = torch.stack([transform(image) for _ in range(views // 4)])
    unnormalised = [x * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
                    for x in (batched, per_image)]  # fmt: skip
    return [x.mean(dim=(1, 2, 3)) for x in unnormalised]


def test_a_colour_strength_of_2_draws_the_same_jitter_on_both_paths(photo):
    """At s = 2 brightness, contrast and saturation would range over 1 -/+ 1.6: torchvision cuts
    the factors at 0, and the batched path must too, else it darkens a fifth of its views to black
    that the per-image path never does. The two paths' views must come from one distribution."""
    spec = augment.spec_of(("color",), 2.0, one_branch=False)
    ranges = [bound for jitter_range in spec.jitter_ranges for bound in jitter_range]
    assert ranges == pytest.approx([0, 2.6, 0, 2.6, 0, 2.6, -0.4, 0.4])  # flat: pytest 9.2's way
    parameters = BA.BatchSimCLRAugmentation(32, MEAN, STD, spec).draw(
        4000, (32, 32), torch.Generator().manual_seed(0), "cpu"
    )
    assert parameters.factors[:, :3].min() >= 0 and parameters.factors[:, :3].max() <= 2.6
    batched, per_image = view_means_both_paths(spec, photo, 4000)
    # two-sample Kolmogorov-Smirnov distance of the view means (4,000 and 1,000 views): about
    # 0.025 when the paths agree, 0.15 with the factors left below 0
    values = torch.cat([batched, per_image]).sort().values
    cdf = [torch.searchsorted(x.sort().values, values, right=True) / len(x)
           for x in (batched, per_image)]  # fmt: skip
    assert (cdf[0] - cdf[1]).abs().max() < 0.07
    black = [(means < 0.02).float().mean().item() for means in (batched, per_image)]
    assert black[0] == pytest.approx(black[1], abs=0.02)


def test_a_colour_strength_whose_hue_torchvision_refuses_is_refused_up_front():
    """s = 3 asks for a hue jitter of 0.6, beyond torchvision's 0.5: stage one (both data paths)
    and a sweep's points are refused in one line before any data is read."""
    with pytest.raises(errors.UsageError) as refused:
        config.parse(config.Pretrain, ["--color-strength", "3"])
    assert "--color-strength 3.0 is too large" in str(refused.value)
    assert "pass 2.5 or less" in str(refused.value)
    config.parse(config.Pretrain, ["--color-strength", "2.5"])


@pytest.mark.parametrize("strength, unchanged", [(0.0, True), (0.5, False)])
def test_colour_strength_0_gives_views_without_colour_change_on_both_paths(strength, unchanged):
    """A solid-colour image: crop and flip cannot change it, so every view equals the image
    exactly when the jitter has strength 0, and most views differ at the paper's 0.5."""
    spec = augment.spec_of(("crop", "flip", "color"), strength, one_branch=False)
    solid = torch.tensor([200, 60, 30], dtype=torch.uint8)[:, None, None].expand(3, 32, 32)
    expected = normalised(solid.float() / 255)
    batched = batched_views(spec, solid.expand(64, -1, -1, -1).contiguous())
    same = [torch.allclose(view, expected, atol=1e-4) for view in batched]
    torch.manual_seed(0)
    transform = augment.simclr_augmentation(32, MEAN, STD, spec)
    image = Image.fromarray(solid.permute(1, 2, 0).numpy())
    same += [torch.allclose(transform(image), expected, atol=1e-4) for _ in range(64)]
    assert all(same) if unchanged else sum(same) < 0.5 * len(same)


def test_augment_crop_gives_views_that_differ_only_by_their_crop(photo):
    crop_only = augment.spec_of(("crop",), 0.5, one_branch=False)
    transform = augment.simclr_augmentation(32, MEAN, STD, crop_only)
    default = augment.simclr_augmentation(32, MEAN, STD, augment.SIMCLR)
    differs_by_more = 0
    for seed in range(16):
        torch.manual_seed(seed)
        box = T.RandomResizedCrop.get_params(photo, crop_only.crop_scale, crop_only.crop_ratio)
        expected = normalised(TF.to_tensor(TF.resized_crop(photo, *box, [32, 32])))
        torch.manual_seed(seed)
        torch.testing.assert_close(transform(photo), expected)
        torch.manual_seed(seed)
        differs_by_more += not torch.allclose(default(photo), expected)
    assert differs_by_more >= 8  # the default's flip, jitter and grayscale change most views
    # batched: each view is its drawn box resized, nothing else
    pixels = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].repeat(16, 1, 1, 1)
    augmentation = BA.BatchSimCLRAugmentation(32, MEAN, STD, crop_only)
    parameters = augmentation.draw(16, (32, 32), torch.Generator().manual_seed(1), "cpu")
    expected = normalised(BA.resized_crop(pixels.float() / 255, parameters.boxes, 32))
    torch.testing.assert_close(augmentation.apply(pixels, parameters), expected)


def test_one_branch_leaves_the_second_view_plain_and_the_first_augmented(photo):
    spec = augment.spec_of(augment.DEFAULT_OPS, 0.5, one_branch=True)
    plain = augment.eval_transform(32, MEAN, STD)(photo)
    torch.manual_seed(0)
    pairs = [augment.view_pairs(32, MEAN, STD, spec)(photo) for _ in range(8)]
    assert all(torch.equal(x2, plain) for _, x2 in pairs)
    assert not any(torch.allclose(x1, plain) for x1, _ in pairs)


def views_preview(image_folder, data_path, *argv):
    """The first views loader's preview of a stage-one cfg on the test folder, normalised."""
    cfg = config.parse(
        config.Pretrain,
        ["--dataset", "folder", "--data-dir", str(image_folder), "--data-path", data_path]
        + ["--batch-size", "8", "--workers", "0", "--knn-every", "0", *argv],
    )
    data = stage_one_data(cfg, torch.device("cpu"))
    originals, x1, x2 = data.views_loader.preview(8)
    return TF.normalize(originals, data.mean, data.std), x1, x2


@pytest.mark.parametrize("data_path", ["device", "workers"])
def test_both_data_paths_honour_augment_colour_strength_and_one_branch(image_folder, data_path):
    close = lambda a, b: torch.allclose(a, b, atol=1e-4)  # noqa: E731
    originals, x1, x2 = views_preview(image_folder, data_path, "--augment", "flip", "--one-branch")
    assert all(close(plain, second) for plain, second in zip(originals, x2))
    mirrored = [close(first, plain.flip(-1)) for plain, first in zip(originals, x1)]
    kept = [close(first, plain) for plain, first in zip(originals, x1)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)
    originals, x1, x2 = views_preview(
        image_folder, data_path, "--augment", "color", "--color-strength", "0"
    )
    assert all(close(plain, view) for plain, view in zip(originals, x1))
    assert all(close(plain, view) for plain, view in zip(originals, x2))
    originals, x1, _ = views_preview(image_folder, data_path, "--augment", "color")
    assert not all(close(plain, view) for plain, view in zip(originals, x1))


def test_features_z_in_knn_and_stage_two(stage_one_run, tmp_path, capsys, monkeypatch):
    run = copy_of_run(stage_one_run, tmp_path)
    fast = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]
    widths, original = [], evaluate.knn_predict

    def knn_predict(memory, labels, queries, *args):
        widths.append((memory.shape[1], queries.shape[1]))
        return original(memory, labels, queries, *args)

    monkeypatch.setattr(evaluate, "knn_predict", knn_predict)
    for which in ("h", "z"):
        code, _, _ = run_main("knn", ["--run-dir", run, "--features", which, *fast], capsys)
        assert code == 0
    assert widths == [(512, 512), (128, 128)]  # h of the ResNet-18, then the head's z
    found = {w: json.loads((run / f"knn_{w}.json").read_text()) for w in ("h", "z")}
    assert found["z"]["features"] == "z" and 0 <= found["z"]["knn_top1"] <= 100

    argv = ["--run-dir", run, "--features", "z", "--epochs", "1", "--batch-size", "8", *fast]
    code, _, _ = run_main("trainstage2", argv, capsys)
    assert code == 0
    evaluation = run / "evaluations" / "linear-all-labels-head-layer-2"
    results = results_of(evaluation)
    assert results["from_head_layer"] == 2 and results["features"] == "z"
    weights = torch.load(evaluation / "stage2.pth", weights_only=True)["model"]
    assert weights["classifier.weight"].shape == (len(CLASSES), 128)  # reads z, not h

    code, _, errors = run_main("trainstage2", [*argv, "--from-head-layer", "1"], capsys)
    assert code != 0 and errors[0].startswith("error: --features z puts the classifier")


def test_pictures_finds_neighbours_by_the_features_asked_for(
    stage_one_run, tmp_path, capsys, monkeypatch
):
    pictures = load_script("pictures")
    used = []
    original = pictures.nearest
    monkeypatch.setattr(
        pictures, "nearest", lambda q, m, k, own: used.append(q.shape[1]) or original(q, m, k, own)
    )
    run = copy_of_run(stage_one_run, tmp_path)
    argv = ["--run-dir", str(run), "--features", "z", "--tsne-images", "6", "--neighbour-rows", "2"]
    pictures.main(argv + ["--device", "cpu", "--workers", "0", "--precision", "fp32"])
    assert used == [128] and os.path.isfile(run / "neighbours.png")
