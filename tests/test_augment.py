"""The paper's CIFAR augmentation, the stage-two transforms, and the class-balanced subset."""

import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import dataclasses

from simclr import augment
from simclr import augment_batched
from simclr import errors
from simclr import datasets

MEAN, STD = datasets.TORCHVISION["cifar10"].mean, datasets.TORCHVISION["cifar10"].std
SIMCLR = augment.SIMCLR
BLURRED = dataclasses.replace(SIMCLR, blur=True)


@pytest.fixture
def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def steps(transform):
    """Every transform inside a Compose, RandomApply wrappers opened."""
    found = []
    for step in transform.transforms:
        found.append(step)
        if isinstance(step, T.RandomApply):
            found.extend(step.transforms)
    return found


def unnormalise(x):
    return x * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]


def test_two_views_are_normalised_32x32_tensors_that_differ(image):
    views = augment.TwoViews(augment.simclr_augmentation(32, MEAN, STD, SIMCLR))
    torch.manual_seed(0)
    x1, x2 = views(image)
    assert x1.shape == x2.shape == (3, 32, 32) and x1.dtype == torch.float32
    for x in (x1, x2):
        pixels = unnormalise(x)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert not torch.equal(x1, x2)


def test_augmentation_follows_the_paper_and_has_no_blur_unless_asked(image):
    default = steps(augment.simclr_augmentation(32, MEAN, STD, SIMCLR))
    crop = next(s for s in default if isinstance(s, T.RandomResizedCrop))
    assert crop.size == (32, 32) and crop.scale == (0.08, 1.0)
    assert next(s for s in default if isinstance(s, T.RandomHorizontalFlip)).p == 0.5
    jitter = next(s for s in default if isinstance(s, T.ColorJitter))
    assert (jitter.brightness, jitter.contrast, jitter.saturation) == ((0.6, 1.4),) * 3
    assert jitter.hue == (-0.1, 0.1)
    jitter_wrapper = next(
        s for s in default if isinstance(s, T.RandomApply) and jitter in s.transforms
    )
    assert jitter_wrapper.p == 0.8
    assert next(s for s in default if isinstance(s, T.RandomGrayscale)).p == 0.2
    assert not any(isinstance(s, T.GaussianBlur) for s in default)
    blurred = steps(augment.simclr_augmentation(32, MEAN, STD, BLURRED))
    assert any(isinstance(s, T.GaussianBlur) for s in blurred)
    assert augment.simclr_augmentation(32, MEAN, STD, BLURRED)(image).shape == (3, 32, 32)


def test_both_pipelines_read_one_spec(image):
    """Every constant comes from the spec: changed there, both the torchvision pipeline and the
    batched one change with it."""
    odd = augment.AugmentationSpec(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        flip_p=1.0,
        color_strength=0.125,
        jitter_p=0.0,
        gray_p=0.0,
        blur=True,
        blur_p=0.0,
        blur_sigma=(0.3, 0.4),
    )
    found = steps(augment.simclr_augmentation(32, MEAN, STD, odd))
    crop = next(s for s in found if isinstance(s, T.RandomResizedCrop))
    assert (crop.scale, crop.ratio) == (odd.crop_scale, odd.crop_ratio)
    assert next(s for s in found if isinstance(s, T.RandomHorizontalFlip)).p == 1.0
    jitter = next(s for s in found if isinstance(s, T.ColorJitter))
    assert jitter.brightness == (0.9, 1.1) and jitter.hue == (-0.025, 0.025)
    assert [s.p for s in found if isinstance(s, T.RandomApply)] == [0.0, 0.0]
    assert next(s for s in found if isinstance(s, T.RandomGrayscale)).p == 0.0
    blur = next(s for s in found if isinstance(s, T.GaussianBlur))
    assert tuple(blur.sigma) == (0.3, 0.4) and blur.kernel_size == (odd.blur_kernel_size(32),) * 2
    # Batched: a whole-image crop, always flipped, nothing else: exactly the mirrored image.
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    batched = augment_batched.BatchSimCLRAugmentation(32, (0.0,) * 3, (1.0,) * 3, odd)
    views = batched(pixels.repeat(4, 1, 1, 1), torch.Generator().manual_seed(0))
    torch.testing.assert_close(views, (pixels.float() / 255).flip(-1).expand(4, -1, -1, -1))


def test_stage_two_transforms_crop_and_flip_for_training_and_nothing_random_for_test(image):
    train = steps(augment.linear_train_transform(32, MEAN, STD, SIMCLR))
    assert {type(s) for s in train} == {
        T.RandomResizedCrop,
        T.RandomHorizontalFlip,
        T.ToTensor,
        T.Normalize,
    }
    test = augment.eval_transform(32, MEAN, STD)
    assert torch.equal(test(image), test(image))
    big = image.resize((100, 60))
    assert test(big).shape == (3, 32, 32)


def test_a_worker_process_gets_the_same_augmentation_as_the_main_process(image):
    """DataLoader workers receive the transform pickled: the copy must draw the same views from the
    same seed (a lambda would not pickle; a lost parameter would change the views)."""
    views = augment.TwoViews(augment.simclr_augmentation(32, MEAN, STD, BLURRED))
    restored = pickle.loads(pickle.dumps(views))
    torch.manual_seed(3)
    expected = views(image)
    torch.manual_seed(3)
    found = restored(image)
    assert len(found) == 2 and not torch.equal(found[0], found[1])
    for view, expected_view in zip(found, expected):
        assert torch.equal(view, expected_view)


def test_a_folders_normalisation_is_measured_on_its_training_split_only(tmp_path):
    """Test images must not leak into the statistics the network is trained with: here they are
    white, the training images a constant colour, so any test pixel would move the mean."""
    colour = (40, 120, 200)
    for split, pixel in (("train", colour), ("test", (255, 255, 255))):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for number in range(3):
                Image.new("RGB", (8, 8), pixel).save(tmp_path / split / name / f"{number}.png")
    mean, std = datasets.DataSource("folder", str(tmp_path)).normalisation(image_size=8)
    assert mean == pytest.approx([value / 255 for value in colour], abs=1e-6)
    # no spread at all: the floor of one grey level, not 0 (a leaked test pixel would add spread)
    assert std == pytest.approx([datasets.MIN_STD] * 3, abs=1e-6)


def test_balanced_subset_is_seeded_and_equal_per_class():
    targets = [label for label in range(4) for _ in range(50)]
    chosen = datasets.balanced_subset_indices(targets, 22, seed=3)
    assert len(chosen) == len(set(chosen)) == 22
    counts = np.bincount([targets[index] for index in chosen])
    assert sorted(counts.tolist()) == [5, 5, 6, 6]
    assert chosen == datasets.balanced_subset_indices(targets, 22, seed=3)
    assert chosen != datasets.balanced_subset_indices(targets, 22, seed=4)


def test_rgb_loader_reads_odd_images_as_8_bit_rgb(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    deep = np.asarray(datasets.rgb_loader(tmp_path / "deep.png"))
    assert deep.shape == (32, 32, 3) and deep.dtype == np.uint8
    assert deep[0, 0, 0] == 0 and deep[-1, -1, 0] == 255 and 120 < deep.mean() < 135  # not clipped
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(tmp_path / "print.jpg")
    red = np.asarray(datasets.rgb_loader(tmp_path / "print.jpg"))
    assert red.shape == (10, 20, 3) and red[..., 0].mean() > 200 and red[..., 1].mean() < 50
    Image.new("P", (8, 8)).save(tmp_path / "palette.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    for name in ("palette.png", "alpha.png"):
        assert datasets.rgb_loader(tmp_path / name).mode == "RGB"


def test_a_truncated_jpeg_is_an_error_not_a_silent_partial_image(tmp_path):
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.InputError, match="cut.jpg: cannot read it as an image"):
        datasets.rgb_loader(tmp_path / "cut.jpg")
