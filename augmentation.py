"""The SimCLR augmentation's constants, written once: the torchvision pipeline (workerdata.py) and
the batched one (batchaugment.py) both read them from here, so the two cannot drift apart."""

import dataclasses


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
