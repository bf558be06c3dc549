"""Datasets, augmentations and loaders for both stages: CIFAR-10 via torchvision or an image folder.

A folder dataset is DIR/train/CLASS/*.png|jpg and DIR/test/CLASS/*; labels are unused in stage one.
"""

import collections
import os
import warnings

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

import config

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
NORMALISATION_SAMPLE = 5000  # images of a folder dataset read to estimate its mean and std

PretrainData = collections.namedtuple(
    "PretrainData", "views_loader memory_loader test_loader class_names mean std"
)
LinearEvalData = collections.namedtuple(
    "LinearEvalData", "train_loader plain_train_loader test_loader class_names"
)


class TwoViews:
    """Applies one random transform twice to the same image: the positive pair of SimCLR."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image), self.transform(image)


def simclr_augmentation(image_size, mean, std, blur=False):
    """The paper's CIFAR augmentation (Appendix B.9), with colour strength s = 0.5."""
    steps = [
        T.RandomResizedCrop(image_size, scale=(0.08, 1.0)),  # crops are resized back to full size
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),  # 0.8s, 0.8s, 0.8s, 0.2s
        T.RandomGrayscale(p=0.2),
    ]
    if blur:  # off for CIFAR in the paper: 32x32 images are already blurry
        kernel_size = 2 * (image_size // 20) + 1  # odd, about a tenth of the image side
        steps.append(T.RandomApply([T.GaussianBlur(kernel_size, sigma=(0.1, 2.0))], p=0.5))
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


def linear_train_transform(image_size, mean, std):
    """Stage-two training: random crop and flip only."""
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(0.08, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def eval_transform(image_size, mean, std):
    """No augmentation: resize to the training size and normalise (kNN, test split, test.py)."""
    return T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(mean, std)])


def rgb_loader(path):
    """Any image file as 8-bit RGB: grayscale, 16-bit, RGBA, palette and CMYK images included.
    A file that does not decode raises config.InputError naming it."""
    try:
        with warnings.catch_warnings():
            # 100-megapixel photos pass PIL's first decompression-bomb threshold with a warning;
            # twice that is still refused, and ends as an InputError below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return to_8_bit_rgb(image)
    except Exception as error:  # PIL raises several kinds for unreadable or non-image files
        raise config.InputError(
            f"{path}: cannot read it as an image ({error}); replace or remove the file"
        ) from None


def to_8_bit_rgb(image):
    if image.mode.startswith("I"):  # 16- or 32-bit integer grayscale: scale, do not clip
        depth = 16 if image.mode.startswith("I;16") or np.asarray(image).max() < 2**16 else 32
        scaled = np.asarray(image).astype(np.float64) * (255 / (2**depth - 1))
        return Image.fromarray(scaled.round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def check_folder_dataset(data_dir):
    """Exit with one line if DIR/train and DIR/test are missing, empty or have different classes."""
    classes = {}
    for split in ("train", "test"):
        split_dir = os.path.join(data_dir, split)
        if not os.path.isdir(split_dir):
            config.fail(
                f"{split_dir} does not exist: a folder dataset needs "
                f"{data_dir}/train/CLASS/* and {data_dir}/test/CLASS/*"
            )
        classes[split] = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
        has_images = any(
            name.lower().endswith(IMAGE_EXTENSIONS)
            for class_name in classes[split]
            for name in os.listdir(os.path.join(split_dir, class_name))
        )
        if not has_images:
            config.fail(
                f"{split_dir} has no images in class folders: put them in "
                f"{split_dir}/CLASS/*.png or *.jpg"
            )
    if classes["train"] != classes["test"]:
        config.fail(
            f"the class folders of {data_dir}/train and {data_dir}/test differ: "
            f"{classes['train']} vs {classes['test']}"
        )


def cifar10(data_dir, train, transform):
    """CIFAR-10 from data_dir, downloaded there first if it is missing."""
    try:
        return torchvision.datasets.CIFAR10(data_dir, train=train, transform=transform)
    except RuntimeError:
        pass  # not there yet
    try:
        return torchvision.datasets.CIFAR10(
            data_dir, train=train, transform=transform, download=True
        )
    except Exception as error:  # URLError, SSL, timeouts, a corrupt partial file: all end here
        config.fail(
            f"CIFAR-10 is not in {data_dir} and the download failed ({error}); put "
            f"cifar-10-python.tar.gz or its extracted folder cifar-10-batches-py into "
            f"{data_dir} (or pass --data-dir), then run again"
        )


def image_dataset(dataset, data_dir, train, transform):
    """One split of CIFAR-10 or of a folder dataset, with its transform."""
    if dataset == "cifar10":
        return cifar10(data_dir, train, transform)
    split_dir = os.path.join(data_dir, "train" if train else "test")
    return torchvision.datasets.ImageFolder(
        split_dir, transform=transform, loader=rgb_loader, is_valid_file=has_image_extension
    )


def has_image_extension(path):
    return path.lower().endswith(IMAGE_EXTENSIONS)


def balanced_subset_indices(targets, size, seed):
    """size indices drawn without replacement, as equal a share per class as possible, seeded."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.as_tensor(targets)
    classes = targets.unique().tolist()
    per_class = [
        size // len(classes) + (rank < size % len(classes)) for rank in range(len(classes))
    ]
    chosen = []
    for label, count in zip(classes, per_class):
        members = (targets == label).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(chosen).sort().values.tolist()


def channel_statistics(dataset, seed):
    """Per-channel mean and std of a sample of a dataset whose transform is plain ToTensor."""
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randperm(len(dataset), generator=generator)[:NORMALISATION_SAMPLE].tolist()
    pixels = torch.stack([dataset[index][0] for index in sample]).transpose(0, 1).flatten(1)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())


def normalisation(dataset, data_dir, image_size, seed):
    """CIFAR-10's published statistics, or those measured on a folder dataset's training images."""
    if dataset == "cifar10":
        return CIFAR10_MEAN, CIFAR10_STD
    plain = T.Compose([T.Resize((image_size, image_size)), T.ToTensor()])
    return channel_statistics(image_dataset(dataset, data_dir, True, plain), seed)


def training_split(dataset, data_dir, transform, subset, seed):
    """The training split, or a seeded class-balanced subset of it when subset > 0."""
    split = image_dataset(dataset, data_dir, True, transform)
    if subset and subset < len(split):
        split = torch.utils.data.Subset(split, balanced_subset_indices(split.targets, subset, seed))
    return split


def loader(dataset, batch_size, workers, shuffle, seed, drop_last=False):
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        # A shuffled loader starts fresh workers each epoch, seeded from its generator alone, so
        # an epoch's augmentation is fixed by the generator's state (resume.py relies on it).
        persistent_workers=workers > 0 and not shuffle,
    )


def check_batch_size(batch_size, split):
    if batch_size > len(split):
        config.fail(
            f"--batch-size {batch_size} is larger than the {len(split)} training images: "
            f"pass --batch-size {len(split)} or less"
        )


def pretraining_data(cfg, device):
    """Loaders for stage one: augmented view pairs, and the plain train and test splits for kNN.

    The per-image path: PIL transforms in DataLoader workers, batches moved to the device later."""
    if cfg.dataset == "folder":
        check_folder_dataset(cfg.data_dir)
    mean, std = normalisation(cfg.dataset, cfg.data_dir, cfg.image_size, cfg.seed)
    views = TwoViews(simclr_augmentation(cfg.image_size, mean, std, cfg.blur))
    views_split = training_split(cfg.dataset, cfg.data_dir, views, cfg.subset, cfg.seed)
    check_batch_size(cfg.batch_size, views_split)
    plain = eval_transform(cfg.image_size, mean, std)
    memory_split = training_split(cfg.dataset, cfg.data_dir, plain, cfg.subset, cfg.seed)
    test_split = image_dataset(cfg.dataset, cfg.data_dir, False, plain)
    return PretrainData(
        # drop_last: a small last batch would have few negatives and noisy BatchNorm statistics
        views_loader=loader(views_split, cfg.batch_size, cfg.workers, True, cfg.seed, True),
        memory_loader=loader(memory_split, cfg.batch_size, cfg.workers, False, cfg.seed),
        test_loader=loader(test_split, cfg.batch_size, cfg.workers, False, cfg.seed),
        class_names=list(test_split.classes),
        mean=mean,
        std=std,
    )


def linear_eval_data(dataset, data_dir, subset, image_size, mean, std, cfg):
    """Stage two: the training split with crop + flip and plain, and the plain test split."""
    if dataset == "folder":
        check_folder_dataset(data_dir)
    train_split = training_split(
        dataset, data_dir, linear_train_transform(image_size, mean, std), subset, cfg.seed
    )
    check_batch_size(cfg.batch_size, train_split)
    plain = eval_transform(image_size, mean, std)
    plain_train_split = training_split(dataset, data_dir, plain, subset, cfg.seed)
    test_split = image_dataset(dataset, data_dir, False, plain)
    return LinearEvalData(
        train_loader=loader(train_split, cfg.batch_size, cfg.workers, True, cfg.seed),
        plain_train_loader=loader(plain_train_split, cfg.batch_size, cfg.workers, False, cfg.seed),
        test_loader=loader(test_split, cfg.batch_size, cfg.workers, False, cfg.seed),
        class_names=list(test_split.classes),
    )
