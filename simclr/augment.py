"""The SimCLR augmentation: its constants, written once (AugmentationSpec), and its torchvision
form on one PIL image at a time (the per-image path, stage two, test.py's inference transform).
Its batched form, on whole uint8 batches on the device, is augment_batched.py: both read the same
spec, so the two cannot drift apart."""

import dataclasses

import torchvision.transforms as T

from simclr import datasets


# The ops that --augment can name, in the order the pipeline applies them.
OPS = ("crop", "flip", "color", "gray", "blur")
DEFAULT_OPS = ("crop", "flip", "color", "gray")  # blur: off for CIFAR in the paper
# torchvision's ColorJitter refuses a hue jitter above half the colour wheel; the hue is 0.2s, so
# no colour strength above this can be applied by the per-image path, nor by the batched one.
MAX_HUE = 0.5
HUE_PER_STRENGTH = 0.2
MAX_COLOR_STRENGTH = MAX_HUE / HUE_PER_STRENGTH


@dataclasses.dataclass(frozen=True)
class AugmentationSpec:
    """The paper's CIFAR augmentation (Appendix B.9) with colour strength s = 0.5."""

    crop: bool = True  # False: the whole image, resized as for evaluation
    crop_scale: tuple = (0.08, 1.0)  # RandomResizedCrop area, as a fraction of the image
    crop_ratio: tuple = (3 / 4, 4 / 3)  # and aspect ratio; crops are resized back to full size
    flip_p: float = 0.5
    color_strength: float = 0.5  # the paper's s (Table 1); the jitter's four ranges follow from it
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur: bool = False  # off for CIFAR in the paper: 32x32 images are already blurry
    blur_p: float = 0.5
    blur_sigma: tuple = (0.1, 2.0)
    # The paper's Figure 5 protocol: the ops on the first view only, the second view the image
    # as it is (t(x) = x). The paper crops both branches first because ImageNet's images differ in
    # size; CIFAR's all have one size, so the identity branch here is the plain image.
    one_branch: bool = False

    @property
    def jitter(self):
        """ColorJitter's brightness, contrast, saturation and hue: 0.8s, 0.8s, 0.8s, 0.2s."""
        strength = self.color_strength
        return (0.8 * strength, 0.8 * strength, 0.8 * strength, HUE_PER_STRENGTH * strength)

    @property
    def jitter_ranges(self):
        """The ranges the four factors are drawn from, as ColorJitter makes them of jitter: 1 -/+ b
        for brightness, contrast and saturation, cut at 0 (a negative factor would turn an image
        black or invert it), and -/+ hue."""
        *scales, hue = self.jitter
        return [(max(0.0, 1 - scale), 1 + scale) for scale in scales] + [(-hue, hue)]

    def blur_kernel_size(self, image_size):
        """Odd, about a tenth of the image side, as the paper's ImageNet blur."""
        return 2 * (image_size // 20) + 1


SIMCLR = AugmentationSpec()


def spec_of(ops, color_strength, one_branch):
    """Stage one's spec: SIMCLR's constants, with each op not in ops (a subset of OPS) left out,
    the jitter at color_strength, and one_branch as the paper's Figure 5 asks."""
    return dataclasses.replace(
        SIMCLR,
        crop="crop" in ops,
        flip_p=SIMCLR.flip_p if "flip" in ops else 0.0,
        color_strength=color_strength,
        jitter_p=SIMCLR.jitter_p if "color" in ops else 0.0,
        gray_p=SIMCLR.gray_p if "gray" in ops else 0.0,
        blur="blur" in ops,
        one_branch=one_branch,
    )


class TwoViews:
    """Applies one random transform twice to the same image: the positive pair of SimCLR; with
    second, the second view goes through that instead (one_branch: the plain image)."""

    def __init__(self, transform, second=None):
        self.transform, self.second = transform, second or transform

    def __call__(self, image):
        return self.transform(image), self.second(image)


def simclr_augmentation(image_size, mean, std, spec):
    """spec (an AugmentationSpec) as torchvision transforms, then normalisation."""
    crop = T.RandomResizedCrop(image_size, scale=spec.crop_scale, ratio=spec.crop_ratio)
    steps = [
        crop if spec.crop else datasets.square(image_size),
        T.RandomHorizontalFlip(p=spec.flip_p),
        T.RandomApply([T.ColorJitter(*spec.jitter)], p=spec.jitter_p),
        T.RandomGrayscale(p=spec.gray_p),
    ]
    if spec.blur:
        blur = T.GaussianBlur(spec.blur_kernel_size(image_size), sigma=spec.blur_sigma)
        steps.append(T.RandomApply([blur], p=spec.blur_p))
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


def view_pairs(image_size, mean, std, spec):
    """The per-image path's positive pairs: two views through the spec, or with one_branch the
    first through it and the second plain."""
    second = eval_transform(image_size, mean, std) if spec.one_branch else None
    return TwoViews(simclr_augmentation(image_size, mean, std, spec), second)


def linear_train_transform(image_size, mean, std, spec):
    """Stage two's training augmentation: the spec's random crop and flip only."""
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=spec.crop_scale, ratio=spec.crop_ratio),
            T.RandomHorizontalFlip(p=spec.flip_p),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def eval_transform(image_size, mean, std):
    """No augmentation: datasets.RESIZE_POLICY and normalisation (kNN, test split, test.py)."""
    return T.Compose([datasets.square(image_size), T.ToTensor(), T.Normalize(mean, std)])
