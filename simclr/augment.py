"""The SimCLR augmentation: its constants, written once (AugmentationSpec), and its torchvision
form on one PIL image at a time (the per-image path, stage two, test.py's inference transform).
Its batched form, on whole uint8 batches on the device, is augment_batched.py: both read the same
spec, so the two cannot drift apart."""

import dataclasses

import torchvision.transforms as T

from simclr import datasets


@dataclasses.dataclass(frozen=True)
class AugmentationSpec:
    """The paper's CIFAR augmentation (Appendix B.9) with colour strength s = 0.5."""

    crop_scale: tuple = (0.08, 1.0)  # RandomResizedCrop area, as a fraction of the image
    crop_ratio: tuple = (3 / 4, 4 / 3)  # and aspect ratio; crops are resized back to full size
    flip_p: float = 0.5
    jitter: tuple = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue: 0.8s x 3, 0.2s
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur: bool = False  # off for CIFAR in the paper: 32x32 images are already blurry
    blur_p: float = 0.5
    blur_sigma: tuple = (0.1, 2.0)

    def blur_kernel_size(self, image_size):
        """Odd, about a tenth of the image side, as the paper's ImageNet blur."""
        return 2 * (image_size // 20) + 1


SIMCLR = AugmentationSpec()


class TwoViews:
    """Applies one random transform twice to the same image: the positive pair of SimCLR."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image), self.transform(image)


def simclr_augmentation(image_size, mean, std, spec):
    """spec (an AugmentationSpec) as torchvision transforms, then normalisation."""
    steps = [
        T.RandomResizedCrop(image_size, scale=spec.crop_scale, ratio=spec.crop_ratio),
        T.RandomHorizontalFlip(p=spec.flip_p),
        T.RandomApply([T.ColorJitter(*spec.jitter)], p=spec.jitter_p),
        T.RandomGrayscale(p=spec.gray_p),
    ]
    if spec.blur:
        blur = T.GaussianBlur(spec.blur_kernel_size(image_size), sigma=spec.blur_sigma)
        steps.append(T.RandomApply([blur], p=spec.blur_p))
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


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
