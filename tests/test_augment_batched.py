"""The batched augmentation against torchvision: (a) each op, given the same parameters, matches
torchvision.transforms.v2.functional on the same float images; (b) the sampled parameters follow
torchvision's distributions.

Tolerances (max absolute difference on images in [0, 1]): crop-and-resize, brightness, contrast,
saturation, grayscale and blur 1e-5 (float32 rounding); hue 1e-4, because the round trip through
HSV is computed by a different formula. Downscaling crops are compared with antialias=False: like
grid_sample, the batched path does not low-pass filter. CIFAR crops are never larger than the output
(32x32 from 32x32), so there the two paths are the same.
"""

import dataclasses
import math
import shutil

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from scipy import stats

from simclr import augment
from simclr import augment_batched as BA

DRAWS = 4000


def colourful_images(batch=6, size=32, seed=0):
    """Random colours plus flat grey, pure-colour and tied-channel patches (hue's edge cases)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=generator)
    images[:, :, :4, :4] = 0.5  # grey: no hue
    images[:, 0, 4:8, :4], images[:, 1:, 4:8, :4] = 1.0, 0.0  # pure red
    images[:, :2, 8:12, :4] = 0.7  # red == green ties
    images[0] = 0.0  # black
    return images


@pytest.mark.parametrize(
    "size, top, left, h, w, out",
    [
        (32, 3, 5, 20, 14, 32),  # upscaling crop, as in CIFAR
        (32, 0, 0, 32, 32, 32),  # whole image: identity
        (32, 30, 31, 2, 1, 32),  # a sliver at the corner
        (64, 2, 7, 60, 50, 32),  # downscaling
    ],
)
def test_resized_crop_matches_torchvision(size, top, left, h, w, out):
    images = colourful_images(size=size)
    boxes = torch.tensor([[top, left, h, w]], dtype=torch.float32).expand(len(images), 4)
    ours = BA.resized_crop(images, boxes, out)
    theirs = TF.resized_crop(images, top, left, h, w, [out, out], antialias=False)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_each_image_gets_its_own_box():
    images = colourful_images(batch=2)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [10.0, 4.0, 20.0, 28.0]])
    ours = BA.resized_crop(images, boxes, 32)
    for index, (top, left, h, w) in enumerate(boxes.int().tolist()):
        theirs = TF.resized_crop(images[index], top, left, h, w, [32, 32], antialias=True)
        torch.testing.assert_close(ours[index], theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "ours, theirs, values",
    [
        (BA.adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.37]),
        (BA.adjust_contrast, TF.adjust_contrast, [0.6, 0.93, 1.4]),
        (BA.adjust_saturation, TF.adjust_saturation, [0.6, 1.0, 1.4]),
    ],
)
def test_colour_ops_match_torchvision(ours, theirs, values):
    images = colourful_images(batch=len(values))
    result = ours(images, torch.tensor(values))
    for index, value in enumerate(values):
        torch.testing.assert_close(result[index], theirs(images[index], value), atol=1e-5, rtol=0)


def test_hue_matches_torchvision_within_1e_4():
    shifts = [-0.5, -0.1, -0.03, 0.0, 0.07, 0.5]
    images = colourful_images(batch=len(shifts))
    result = BA.adjust_hue(images, torch.tensor(shifts))
    for index, shift in enumerate(shifts):
        torch.testing.assert_close(
            result[index], TF.adjust_hue(images[index], shift), atol=1e-4, rtol=0
        )


def test_grayscale_and_blur_match_torchvision():
    images = colourful_images(batch=3)
    torch.testing.assert_close(
        BA.grayscale(images).expand_as(images),
        TF.rgb_to_grayscale(images, num_output_channels=3),
        atol=1e-5,
        rtol=0,
    )
    sigmas = [0.1, 0.8, 2.0]
    blurred = BA.gaussian_blur(images, torch.tensor(sigmas), 5)  # 5: 5 // 2 != 5 // 3
    for index, sigma in enumerate(sigmas):
        torch.testing.assert_close(
            blurred[index],
            TF.gaussian_blur(images[index], [5, 5], [sigma, sigma]),
            atol=1e-5,
            rtol=0,
        )


def test_colour_jitter_applies_the_ops_in_each_images_own_order():
    images = colourful_images(batch=3)
    factors = torch.tensor([[1.3, 0.7, 1.2, 0.08]] * 3)
    orders = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
    apply = torch.tensor([True, True, False])
    result = BA.colour_jitter(images, factors, orders, apply)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for index in range(2):
        expected = images[index]
        for op_index in orders[index].tolist():
            expected = ops[op_index](expected, factors[index, op_index].item())
        torch.testing.assert_close(result[index], expected, atol=1e-4, rtol=0)
    assert torch.equal(result[2], images[2])  # not applied: untouched


@pytest.mark.parametrize("height, width", [(32, 32), (24, 48)])
def test_crop_parameters_follow_torchvision_distribution(height, width):
    generator = torch.Generator().manual_seed(1)
    boxes = BA.sample_crop_boxes(
        DRAWS, height, width, (0.08, 1.0), (3 / 4, 4 / 3), generator, "cpu"
    )
    torch.manual_seed(2)
    reference = torch.tensor(
        [
            T.RandomResizedCrop.get_params(
                torch.empty(3, height, width), [0.08, 1.0], [3 / 4, 4 / 3]
            )
            for _ in range(DRAWS)
        ],
        dtype=torch.float32,
    )
    top, left, h, w = boxes.unbind(1)
    ref_top, ref_left, ref_h, ref_w = reference.unbind(1)
    assert (top >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    checks = {
        "area": (h * w, ref_h * ref_w),
        "log aspect": ((w / h).log(), (ref_w / ref_h).log()),
        "top": (top, ref_top),
        "left": (left, ref_left),
    }
    for name, (sample, reference_sample) in checks.items():
        p_value = stats.ks_2samp(sample.numpy(), reference_sample.numpy()).pvalue
        assert p_value > 1e-3, f"{name}: KS p = {p_value:.2g}"


def test_fallback_when_no_box_fits():
    generator = torch.Generator().manual_seed(0)
    # a 4x100 strip cannot hold any box with aspect ratio near 1 and area >= 90% of the strip
    boxes = BA.sample_crop_boxes(50, 4, 100, (0.9, 1.0), (3 / 4, 4 / 3), generator, "cpu")
    top, left, h, w = T.RandomResizedCrop.get_params(
        torch.empty(3, 4, 100), [0.9, 1.0], [3 / 4, 4 / 3]
    )
    assert boxes.tolist() == [[top, left, h, w]] * 50


def test_random_choices_have_torchvision_rates_and_ranges():
    generator = torch.Generator().manual_seed(3)
    batch_augment = BA.BatchSimCLRAugmentation(32, (0.0,) * 3, (1.0,) * 3)
    images = (colourful_images(batch=2)[1:] * 255).to(torch.uint8).expand(DRAWS, 3, 32, 32)
    views = batch_augment(images, generator)
    assert views.shape == (DRAWS, 3, 32, 32) and views.dtype == torch.float32
    assert views.min() >= 0 and views.max() <= 1
    gray = (views[:, 0] == views[:, 1]).flatten(1).all(1) & (views[:, 1] == views[:, 2]).flatten(
        1
    ).all(1)
    assert gray.float().mean().item() == pytest.approx(0.2, abs=0.025)
    assert len({tuple(view.flatten()[:64].tolist()) for view in views[:50]}) == 50  # per image


IDENTITY = augment.AugmentationSpec(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0
)


@pytest.mark.parametrize(
    "changes, rate",
    [({"flip_p": 0.5}, 0.5), ({"jitter_p": 0.8}, 0.8), ({"blur": True, "blur_p": 0.5}, 0.5)],
)
def test_flip_jitter_and_blur_each_change_their_share_of_the_images(changes, rate):
    """Every other op off and the crop the whole image: a view differs from its image exactly
    when the op under test was drawn for it."""
    batch_augment = BA.BatchSimCLRAugmentation(
        32, (0.0,) * 3, (1.0,) * 3, dataclasses.replace(IDENTITY, **changes)
    )
    image = (colourful_images(batch=2)[1:] * 255).to(torch.uint8)
    views = batch_augment(image.expand(DRAWS, 3, 32, 32), torch.Generator().manual_seed(5))
    changed = (views - image.float() / 255).abs().flatten(1).amax(1) > 1e-4
    assert changed.float().mean().item() == pytest.approx(rate, abs=0.025)


def test_the_same_draws_twice_with_the_same_seed_and_differ_otherwise():
    batch_augment = BA.BatchSimCLRAugmentation(
        32, (0.5,) * 3, (0.25,) * 3, dataclasses.replace(augment.SIMCLR, blur=True)
    )
    images = (colourful_images(batch=8) * 255).to(torch.uint8)
    first = batch_augment(images, torch.Generator().manual_seed(7))
    again = batch_augment(images, torch.Generator().manual_seed(7))
    other = batch_augment(images, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    unnormalised = first * 0.25 + 0.5
    assert unnormalised.min() >= -1e-6 and unnormalised.max() <= 1 + 1e-6
    assert math.isfinite(first.sum().item())


def test_chunking_and_slicing_the_batch_leave_every_images_views_unchanged():
    """The parameters are drawn for the whole batch first: a CPU's chunks, or a data-parallel
    rank that applies only its rows, give each image the views the whole batch gives it."""
    images = (colourful_images(batch=7) * 255).to(torch.uint8)
    chunked = BA.BatchSimCLRAugmentation(32, (0.5,) * 3, (0.25,) * 3, chunk_size=3)
    whole = BA.BatchSimCLRAugmentation(32, (0.5,) * 3, (0.25,) * 3)
    expected = whole(images, torch.Generator().manual_seed(1))
    views = chunked(images, torch.Generator().manual_seed(1))
    assert views.shape == (7, 3, 32, 32) and torch.equal(views, expected)
    parameters = whole.draw(7, (32, 32), torch.Generator().manual_seed(1), images.device)
    rows = slice(4, 7)
    torch.testing.assert_close(whole.apply(images[rows], parameters.rows(rows)), expected[rows])


@pytest.mark.skipif(
    not any(shutil.which(name) for name in ("g++", "c++", "clang++")),
    reason="torch.compile on a CPU needs a C++ compiler",
)
def test_compiled_colour_ops_give_the_eager_views():
    images = (colourful_images(batch=16) * 255).to(torch.uint8)
    eager = BA.BatchSimCLRAugmentation(32, (0.5,) * 3, (0.25,) * 3)
    compiled = BA.BatchSimCLRAugmentation(32, (0.5,) * 3, (0.25,) * 3, compile=True)
    torch.testing.assert_close(
        compiled(images, torch.Generator().manual_seed(3)),
        eager(images, torch.Generator().manual_seed(3)),
        atol=1e-5,
        rtol=0,
    )


def test_jitter_strengths_are_drawn_over_their_whole_ranges(monkeypatch):
    """Each image's brightness, contrast and saturation factor uniform in [1 - s, 1 + s] and its
    hue shift in [-h, h], as torchvision's ColorJitter draws them."""
    drawn = []

    def record(images, factors, order, apply, **ops):
        drawn.append(factors)
        return images

    monkeypatch.setattr(BA, "colour_jitter", record)
    batch_augment = BA.BatchSimCLRAugmentation(32, (0.0,) * 3, (1.0,) * 3)
    images = torch.zeros(DRAWS, 3, 32, 32, dtype=torch.uint8)
    batch_augment(images, torch.Generator().manual_seed(4))
    (factors,) = drawn
    for column, strength in enumerate(augment.SIMCLR.jitter[:3]):
        low, high = factors[:, column].aminmax()
        assert (
            1 - strength <= low < 1 - 0.95 * strength and 1 + 0.95 * strength < high <= 1 + strength
        )
    hue = augment.SIMCLR.jitter[3]
    low, high = factors[:, 3].aminmax()
    assert -hue <= low < -0.95 * hue and 0.95 * hue < high <= hue


def test_views_are_normalised_exactly():
    """A constant image through the identity spec: every pixel is (value / 255 - mean) / std."""
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    batch_augment = BA.BatchSimCLRAugmentation(8, mean, std, IDENTITY)
    value = 200
    views = batch_augment(torch.full((2, 3, 8, 8), value, dtype=torch.uint8), torch.Generator())
    for channel in range(3):
        expected = (value / 255 - mean[channel]) / std[channel]
        torch.testing.assert_close(
            views[:, channel], torch.full((2, 8, 8), expected), atol=1e-6, rtol=0
        )


def test_a_wide_image_is_centre_cropped_when_no_box_fits():
    """Height and width kept apart: a 20x41 image with crops of the whole area at ratio 1 fits
    no box, so it falls back to the centred 20x20 square starting at column (41 - 20) // 2."""
    spec = dataclasses.replace(IDENTITY, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    batch_augment = BA.BatchSimCLRAugmentation(20, (0.0,) * 3, (1.0,) * 3, spec)
    images = (colourful_images(batch=2, size=41)[:, :, :20] * 255).to(torch.uint8)
    views = batch_augment(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(views, images[:, :, :, 10:30].float() / 255, atol=1e-5, rtol=0)


def test_a_tall_image_is_centre_cropped_when_no_box_fits():
    spec = dataclasses.replace(IDENTITY, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    batch_augment = BA.BatchSimCLRAugmentation(20, (0.0,) * 3, (1.0,) * 3, spec)
    images = (colourful_images(batch=2, size=41)[:, :, :, :20] * 255).to(torch.uint8)
    views = batch_augment(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(views, images[:, :, 10:30].float() / 255, atol=1e-5, rtol=0)


def test_a_box_may_take_the_whole_width_or_height():
    """Areas of 90-100% at ratio 1 on a 100x100 image: about 5% of boxes are 100 wide."""
    boxes = BA.sample_crop_boxes(
        DRAWS, 100, 100, (0.9, 1.0), (1.0, 1.0), torch.Generator().manual_seed(6), "cpu"
    )
    top, left, h, w = boxes.unbind(1)
    assert (w == 100).any() and (h == 100).any()
    assert (top + h <= 100).all() and (left + w <= 100).all()


@pytest.mark.parametrize(
    "height, width, expected", [(40, 20, (27, 20)), (20, 40, (20, 27)), (30, 32, (30, 32))]
)
def test_the_fallback_box_is_the_whole_image_cut_to_the_nearest_allowed_ratio(
    height, width, expected
):
    assert BA.centre_crop_fallback(height, width, (3 / 4, 4 / 3)) == expected
