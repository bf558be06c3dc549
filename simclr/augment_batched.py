"""SimCLR augmentation of a whole batch at once on its device, each image with its own parameters.

The same distribution as augment.simclr_augmentation (torchvision, one PIL image at a time), but
as a handful of tensor operations on the batch: no PIL, no worker processes, no per-image loop.
The sampled parameters follow torchvision's rules; the operations, given the same parameters, match
torchvision.transforms.v2.functional on float images (tests/test_augment_batched.py says how closely).
"""

import dataclasses
import math
import typing

import torch
import torch.nn.functional as F

from simclr import augment

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision and PIL use
CROP_TRIES = 10  # torchvision's RandomResizedCrop tries this many boxes before its fallback


def uniform(low, high, shape, generator, device):
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def sample_crop_boxes(batch, height, width, scale, ratio, generator, device):
    """RandomResizedCrop boxes for a batch -> (batch, 4) float tensor of (top, left, h, w).

    As torchvision samples them: area uniform in scale * image area, log aspect ratio uniform,
    sizes rounded; the first of CROP_TRIES boxes that fits wins, its corner uniform over the
    positions that fit; if none fits, the largest centred box with the aspect ratio clamped.
    """
    area = height * width
    target_area = area * uniform(scale[0], scale[1], (batch, CROP_TRIES), generator, device)
    log_ratio = uniform(
        math.log(ratio[0]), math.log(ratio[1]), (batch, CROP_TRIES), generator, device
    )
    aspect = log_ratio.exp()
    crop_w = (target_area * aspect).sqrt().round()
    crop_h = (target_area / aspect).sqrt().round()
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first_fit = torch.where(fits.any(1), fits.int().argmax(1), -1)
    rows = torch.arange(batch, device=device)
    crop_h = crop_h[rows, first_fit.clamp(min=0)]
    crop_w = crop_w[rows, first_fit.clamp(min=0)]
    # torch.randint(0, n + 1) per image, drawn as floor(u * (n + 1)) to vectorise over the batch
    top = (torch.rand(batch, generator=generator, device=device) * (height - crop_h + 1)).floor()
    left = (torch.rand(batch, generator=generator, device=device) * (width - crop_w + 1)).floor()
    fallback_h, fallback_w = centre_crop_fallback(height, width, ratio)
    none_fit = first_fit < 0
    crop_h = torch.where(none_fit, float(fallback_h), crop_h)
    crop_w = torch.where(none_fit, float(fallback_w), crop_w)
    top = torch.where(none_fit, float((height - fallback_h) // 2), top)
    left = torch.where(none_fit, float((width - fallback_w) // 2), left)
    return torch.stack([top, left, crop_h, crop_w], dim=1)


def centre_crop_fallback(height, width, ratio):
    """torchvision's fallback size: the whole image, cut to the nearest allowed aspect ratio."""
    if width / height < min(ratio):
        return int(round(width / min(ratio))), width
    if width / height > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def whole_image_boxes(batch, image_shape, device):
    """(batch, 4) boxes of the whole image: resized_crop then only resizes."""
    height, width = image_shape
    box = torch.tensor([0.0, 0.0, height, width], device=device)
    return box.expand(batch, 4).clone()


def resized_crop(images, boxes, size, flip=None):
    """Crop each image to its (top, left, h, w) box and resize it to size x size, bilinearly;
    mirror the images where flip (B,) is True.

    One grid_sample for the batch. The sample positions are those of resizing the crop alone
    (half-pixel centres) and are clamped to the crop, so no pixel outside the box leaks in.
    A flip reverses the sampled columns, which costs nothing next to flipping the pixels.
    """
    batch, _, height, width = images.shape
    top, left, crop_h, crop_w = boxes.unbind(1)
    steps = (torch.arange(size, device=images.device, dtype=images.dtype) + 0.5) / size
    rows = top[:, None] + (steps[None] * crop_h[:, None] - 0.5).clamp(min=0).minimum(
        crop_h[:, None] - 1
    )
    cols = left[:, None] + (steps[None] * crop_w[:, None] - 0.5).clamp(min=0).minimum(
        crop_w[:, None] - 1
    )
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    # grid_sample wants positions in [-1, 1] with align_corners=False: pixel p sits at (2p+1)/n - 1
    grid_y = (2 * rows + 1) / height - 1
    grid_x = (2 * cols + 1) / width - 1
    grid = torch.stack(
        [
            grid_x[:, None, :].expand(batch, size, size),
            grid_y[:, :, None].expand(batch, size, size),
        ],
        dim=-1,
    )
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(images):
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    weights = torch.tensor(GRAY_WEIGHTS, device=images.device, dtype=images.dtype)
    return (images * weights[:, None, None]).sum(1, keepdim=True)


def per_image(values):
    return values[:, None, None, None]


def blend(images, scale, gray_weight, mean_weight):
    """clamp(scale * image + gray_weight * gray + mean_weight * mean(gray)), with (B,) per-image
    weights, gray being the image's grayscale version.

    Brightness, contrast and saturation are each this one pass with their own weights, so a batch
    whose images take different ones at the same step still needs a single pass.
    """
    gray = grayscale(images)
    offset = per_image(mean_weight) * gray.mean(dim=(1, 2, 3), keepdim=True)
    mixed = per_image(scale) * images + offset
    return mixed.add_(per_image(gray_weight) * gray).clamp_(0, 1)


def adjust_brightness(images, factors):
    zeros = torch.zeros_like(factors)
    return blend(images, factors, zeros, zeros)


def adjust_contrast(images, factors):
    """Blend each image with the mean of its own grayscale version."""
    return blend(images, factors, torch.zeros_like(factors), 1 - factors)


def adjust_saturation(images, factors):
    """Blend each image with its grayscale version."""
    return blend(images, factors, 1 - factors, torch.zeros_like(factors))


def adjust_hue(images, shifts):
    """Rotate each image's hue by its shift (a fraction of the colour wheel, in [-0.5, 0.5]).

    HSV written out without building H, S and V: a hue rotation keeps each pixel's largest channel
    (V) and its chroma C = max - min, so the new pixel is V - C * f(new hue) per channel.
    torchvision goes through full HSV; the two agree to float rounding. Fewer passes over the batch
    matter here: hue is the most expensive op of the augmentation.
    """
    red, green, blue = images.unbind(1)
    value = images.amax(1)
    chroma = value - images.amin(1)
    inverse_chroma = 1 / chroma.clamp(min=1e-12)  # grey pixels: C = 0 and the hue does not matter
    # hue in sextants, 0 to 6: from red (0) through green (2) and blue (4), as PIL and torchvision
    hue = torch.where(
        red == value,
        (green - blue) * inverse_chroma,
        torch.where(
            green == value, (blue - red) * inverse_chroma + 2, (red - green) * inverse_chroma + 4
        ),
    )
    offsets = torch.tensor([5.0, 3.0, 1.0], device=images.device)[None, :, None, None]
    k = hue[:, None] + (6 * shifts[:, None, None, None] + offsets)
    k = k - 6 * torch.floor(k * (1 / 6))  # (offset + hue) mod 6, for the r, g, b channels
    return value[:, None] - chroma[:, None] * torch.minimum(k, 4 - k).clamp_(0, 1)


BRIGHTNESS, CONTRAST, SATURATION, HUE, NO_OP = range(5)


def colour_jitter(images, factors, order, apply, blend_op=blend, hue_op=adjust_hue):
    """factors: (B, 4) brightness, contrast, saturation, hue; order: (B, 4) a permutation of the
    four ops per image, as torchvision draws one per call; apply: (B,) bool, whose images change.

    At each of the four steps one blend pass serves every image (brightness, contrast or
    saturation with its own values, or scale 1 for the rest), then the images whose op at this
    step is hue are rotated as one subset: no per-image loop and no gathering of the whole batch.
    blend_op and hue_op replace blend and adjust_hue, for example with compiled versions.
    """
    op_at = torch.where(apply[:, None], order, NO_OP)
    for step in range(order.shape[1]):
        op = op_at[:, step]
        linear = op <= SATURATION
        factor = factors.gather(1, op.clamp(max=SATURATION)[:, None]).squeeze(1)
        scale = torch.where(linear, factor, 1.0)
        gray_weight = torch.where(op == SATURATION, 1 - factor, 0.0)
        mean_weight = torch.where(op == CONTRAST, 1 - factor, 0.0)
        images = blend_op(images, scale, gray_weight, mean_weight)
        rotated = (op == HUE).nonzero().squeeze(1)
        hue_shifts = factors[rotated, HUE]
        images.index_copy_(0, rotated, hue_op(images.index_select(0, rotated), hue_shifts))
    return images


def gaussian_blur(images, sigmas, kernel_size):
    """Blur each image with its own sigma: one grouped separable convolution, reflect padding."""
    batch, channels, height, width = images.shape
    offsets = torch.arange(kernel_size, device=images.device, dtype=images.dtype) - kernel_size // 2
    kernels = torch.exp(-0.5 * (offsets[None] / sigmas[:, None]) ** 2)
    kernels = (kernels / kernels.sum(1, keepdim=True)).repeat_interleave(channels, 0)
    flat = images.reshape(1, batch * channels, height, width)
    pad = kernel_size // 2
    flat = F.pad(flat, (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, kernels[:, None, :, None], groups=batch * channels)
    flat = F.conv2d(flat, kernels[:, None, None, :], groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


@dataclasses.dataclass
class ViewParameters:
    """Every random choice behind a batch of views, one row per image: crop boxes (B, 4), flips,
    jitter factors (B, 4), jitter op orders (B, 4), whether jitter applies, grayscale, blur sigmas
    and whether blur applies (None without blur)."""

    boxes: torch.Tensor
    flip: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    jitter: torch.Tensor
    gray: torch.Tensor
    sigmas: typing.Optional[torch.Tensor] = None
    blurred: typing.Optional[torch.Tensor] = None

    def rows(self, index):
        """The parameters of the images index (a slice or an index tensor) picks."""
        return ViewParameters(
            *(None if value is None else value[index] for value in dataclasses.astuple(self))
        )


class BatchSimCLRAugmentation:
    """uint8 (B, 3, H, W) images on any device -> normalised float (B, 3, size, size) views.

    Drawing the random parameters (draw) is apart from applying them (apply): a data-parallel rank
    draws them for the whole global batch, the same on every rank, and applies its own rows, so
    the views do not depend on how many ranks share the batch, nor on the CPU's chunking.
    """

    def __init__(self, image_size, mean, std, spec=augment.SIMCLR, chunk_size=None, compile=False):
        """spec: the augmentation's constants; chunk_size: augment this many images at a time
        (None: the whole batch at once); compile: torch.compile the colour ops, which fuses their
        many element-wise passes."""
        self.image_size, self.mean, self.std, self.spec = image_size, mean, std, spec
        self.chunk_size = chunk_size
        self.colour_ops = {}
        if compile:
            self.colour_ops = {
                "blend_op": torch.compile(blend, dynamic=True),
                "hue_op": torch.compile(adjust_hue, dynamic=True),
            }

    def __call__(self, images, generator=None):
        parameters = self.draw(len(images), images.shape[2:], generator, images.device)
        return self.apply(images, parameters)

    def draw(self, batch, image_shape, generator, device):
        """The random parameters of batch views of images of image_shape (H, W)."""
        spec = self.spec
        boxes = sample_crop_boxes(
            batch, *image_shape, spec.crop_scale, spec.crop_ratio, generator, device
        )
        if not spec.crop:  # drawn all the same, so that the other draws do not shift
            boxes = whole_image_boxes(batch, image_shape, device)
        flip = torch.rand(batch, generator=generator, device=device) < spec.flip_p
        factors = torch.stack(
            [uniform(*bounds, batch, generator, device) for bounds in spec.jitter_ranges], 1
        )
        order = torch.rand(batch, 4, generator=generator, device=device).argsort(1)
        jitter = torch.rand(batch, generator=generator, device=device) < spec.jitter_p
        gray = torch.rand(batch, generator=generator, device=device) < spec.gray_p
        parameters = ViewParameters(boxes, flip, factors, order, jitter, gray)
        if spec.blur:
            parameters.sigmas = uniform(*spec.blur_sigma, batch, generator, device)
            parameters.blurred = torch.rand(batch, generator=generator, device=device) < spec.blur_p
        return parameters

    def plain(self, images):
        """The images as they are, resized and normalised: one_branch's second view."""
        boxes = whole_image_boxes(len(images), images.shape[2:], images.device)
        return self.normalise(resized_crop(images.float() / 255, boxes, self.image_size))

    def apply(self, images, parameters):
        """The views of images with parameters (one row each), chunk_size images at a time."""
        if self.chunk_size is None or len(images) <= self.chunk_size:
            return self.augment(images, parameters)
        size = self.chunk_size
        return torch.cat(
            [
                self.augment(
                    images[start : start + size], parameters.rows(slice(start, start + size))
                )
                for start in range(0, len(images), size)
            ]
        )

    def augment(self, images, parameters):
        views = resized_crop(
            images.float() / 255, parameters.boxes, self.image_size, parameters.flip
        )
        if self.spec.jitter_p > 0:  # else four passes that change nothing
            views = colour_jitter(
                views, parameters.factors, parameters.order, parameters.jitter, **self.colour_ops
            )
        gray = parameters.gray
        views[gray] = grayscale(views[gray]).expand(-1, 3, -1, -1)
        if parameters.sigmas is not None:
            kernel_size = self.spec.blur_kernel_size(self.image_size)
            blurred = gaussian_blur(views, parameters.sigmas, kernel_size)
            views = torch.where(parameters.blurred[:, None, None, None], blurred, views)
        return self.normalise(views)

    def normalise(self, views):
        mean = torch.tensor(self.mean, device=views.device)[:, None, None]
        inverse_std = 1 / torch.tensor(self.std, device=views.device)[:, None, None]
        return views.sub_(mean).mul_(inverse_std)
