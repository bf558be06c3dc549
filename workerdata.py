"""The per-image data path: torchvision transforms on one PIL image at a time, in DataLoader worker
processes, for datasets too large to keep on the device, and for stage two."""

import torch
import torchvision.transforms as T

import splits


class TwoViews:
    """Applies one random transform twice to the same image: the positive pair of SimCLR."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image), self.transform(image)


def simclr_augmentation(image_size, mean, std, spec):
    """spec (augmentation.AugmentationSpec) as torchvision transforms, then normalisation."""
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
    """No augmentation: resize to the training size and normalise (kNN, test split, test.py)."""
    return T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(mean, std)])


class SeededLoader(torch.utils.data.DataLoader):
    """A DataLoader whose order and worker seeds come from its own generator, not the global one."""

    def generators(self):
        """The generators that decide its order and augmentation (resume.py saves them)."""
        return [self.generator]


def loader(dataset, batch_size, workers, shuffle, seed, drop_last=False):
    return SeededLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        # A shuffled loader starts fresh workers each epoch, seeded from its generator alone, so
        # an epoch's augmentation is fixed by the generator's state (resume.py relies on it).
        persistent_workers=workers > 0 and not shuffle,
    )


def split_loaders(source, cfg, train_transform, plain_transform, drop_last=False):
    """-> (the training split through train_transform, shuffled; the training split and the test
    split through plain_transform, in order) as loaders of cfg.batch_size."""

    def make(split, transform, shuffle, drop_last=False):
        dataset = splits.Transformed(split, transform)
        return loader(dataset, cfg.batch_size, cfg.workers, shuffle, cfg.seed, drop_last)

    train_split = source.split(train=True)
    return (
        make(train_split, train_transform, shuffle=True, drop_last=drop_last),
        make(train_split, plain_transform, shuffle=False),
        make(source.split(train=False), plain_transform, shuffle=False),
    )


def pretraining_loaders(source, cfg, spec, mean, std):
    """Stage one -> (augmented view pairs, plain training split, plain test split) loaders."""
    views = TwoViews(simclr_augmentation(cfg.image_size, mean, std, spec))
    plain = eval_transform(cfg.image_size, mean, std)
    # drop_last: a small last batch would have few negatives and noisy BatchNorm statistics
    return split_loaders(source, cfg, views, plain, drop_last=True)


def linear_eval_loaders(source, cfg, image_size, mean, std, spec):
    """Stage two -> (crop + flip training split, plain training split, plain test split) loaders."""
    augmented = linear_train_transform(image_size, mean, std, spec)
    return split_loaders(source, cfg, augmented, eval_transform(image_size, mean, std))
