"""The raw splits of a dataset, before any augmentation: CIFAR-10, CIFAR-100 or STL-10 through
torchvision, or an image folder (DIR/train/CLASS/*, DIR/test/CLASS/*, DIR/unlabeled/*), their
checks, the seeded class-balanced training subset and the normalisation statistics.

The device batches (simclr/loaders_device.py) and the worker loaders (simclr/loaders_workers.py) both build on a
DataSource; this module calls neither.
"""

import collections
import functools
import os
import warnings

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

from simclr.errors import InputError

Torchvision = collections.namedtuple(
    "Torchvision", "dataset_class name archive folder mean std channels_first"
)
# torchvision's class, the names its files go by, the published mean and std (None: measured
# like a folder's), and whether its .data array holds images as (N, 3, H, W) or as (N, H, W, 3)
TORCHVISION = {
    "cifar10": Torchvision(
        torchvision.datasets.CIFAR10,
        "CIFAR-10",
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        False,
    ),
    "cifar100": Torchvision(
        torchvision.datasets.CIFAR100,
        "CIFAR-100",
        "cifar-100-python.tar.gz",
        "cifar-100-python",
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        False,
    ),
    # 5,000 labelled training images, 8,000 test images and 100,000 unlabelled ones, 96x96
    "stl10": Torchvision(
        torchvision.datasets.STL10,
        "STL-10",
        "stl10_binary.tar.gz",
        "stl10_binary",
        None,
        None,
        True,
    ),
}
# Images of any size, or of mixed sizes, become square by one policy wherever they are seen whole:
# decoded for the device path, the kNN monitor, the test split, stage two's plain pass, test.py and
# the normalisation statistics. The shorter side goes to the training size and the centre square
# is kept, so nothing is stretched. (Training crops on the workers path are RandomResizedCrop of
# the original image instead; on the device path they are crops of the decoded square.)
RESIZE_POLICY = "shorter side to the image size, then the centre square"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
UNLABELLED_FOLDER = "unlabeled"  # DIR/unlabeled/: images without labels, for stage one alone
NORMALISATION_SAMPLE = 5000  # images of a folder dataset read to estimate its mean and std
# A channel whose measured std is below one grey level (a folder of solid red images has no spread
# in any channel) is divided by this instead: dividing by 0 would make every pixel nan or inf.
MIN_STD = 1 / 255
CHANNELS = ("red", "green", "blue")
# An image narrower or lower than this is refused rather than upscaled: a 1x1 image would become a
# solid square, trained on as if it were a picture. The encoder's own floor, --image-size's.
MIN_IMAGE_SIDE = 8


def rgb_loader(path):
    """Any image file as 8-bit RGB: grayscale, 16-bit, RGBA, palette and CMYK images included.
    A file that does not decode raises InputError naming it."""
    try:
        with warnings.catch_warnings():
            # 100-megapixel photos pass PIL's first decompression-bomb threshold with a warning;
            # twice that is still refused, and ends as an InputError below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if min(image.size) < MIN_IMAGE_SIDE:
                    raise TooSmall(f"{image.size[0]}x{image.size[1]}")
                return to_8_bit_rgb(image)
    except TooSmall as size:
        raise InputError(
            f"{path} is {size} pixels, below {MIN_IMAGE_SIDE} a side: too small to learn from "
            f"(it would be upscaled into a blur); remove it, or replace it with a larger image"
        ) from None
    except Exception as error:  # PIL raises several kinds for unreadable or non-image files
        raise InputError(
            f"{path}: cannot read it as an image ({error}); replace or remove the file"
        ) from None


class TooSmall(Exception):
    pass


def to_8_bit_rgb(image):
    if image.mode.startswith("I"):  # 16- or 32-bit integer grayscale: scale, do not clip
        depth = 16 if image.mode.startswith("I;16") or np.asarray(image).max() < 2**16 else 32
        scaled = np.asarray(image).astype(np.float64) * (255 / (2**depth - 1))
        return Image.fromarray(scaled.round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def square(image_size):
    """RESIZE_POLICY as a torchvision transform of PIL images or tensors."""
    return T.Compose([T.Resize(image_size), T.CenterCrop(image_size)])


def has_image_extension(path):
    return path.lower().endswith(IMAGE_EXTENSIONS)


def check_folder_dataset(data_dir):
    """Raise if DIR/train or DIR/test is missing, has a class folder without images or fewer than
    two classes, or if their class folders differ."""
    classes = {}
    for split in ("train", "test"):
        split_dir = os.path.join(data_dir, split)
        if not os.path.isdir(split_dir):
            raise InputError(
                f"{split_dir} does not exist: a folder dataset needs "
                f"{data_dir}/train/CLASS/* and {data_dir}/test/CLASS/*"
            )
        classes[split] = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
        without_images = [
            class_name
            for class_name in classes[split]
            if not any(
                has_image_extension(name)
                for _, _, names in os.walk(os.path.join(split_dir, class_name))
                for name in names
            )
        ]
        if without_images == classes[split]:
            raise InputError(
                f"{split_dir} has no images in class folders: put them in "
                f"{split_dir}/CLASS/*.png or *.jpg"
            )
        if without_images:
            raise InputError(
                f"{os.path.join(split_dir, without_images[0])} has no images: put some in it, or "
                f"remove the folder"
            )
        if len(classes[split]) < 2:
            # one class gives every classifier and the kNN monitor a perfect, meaningless score
            raise InputError(
                f"{split_dir} has images of one class only ({classes[split][0]}): a classifier "
                f"needs two or more: add {data_dir}/train/OTHER/* and {data_dir}/test/OTHER/*"
            )
    if classes["train"] != classes["test"]:
        raise InputError(
            f"the class folders of {data_dir}/train and {data_dir}/test differ: "
            f"{classes['train']} vs {classes['test']}"
        )


def check_labelled_folder(data_dir):
    """check_folder_dataset, which names a folder without labels (without_labels) as such."""
    try:
        check_folder_dataset(data_dir)
    except InputError:
        try:
            found = without_labels(data_dir)
        except InputError:  # no images at all: check_folder_dataset's words say what is needed
            found = None
        if not found:
            raise
        raise InputError(
            f"{found[2]}: its images have no labels, and this needs them: pass --data-dir of a "
            f"folder with labels ({data_dir}/train/CLASS/* and {data_dir}/test/CLASS/*, two "
            f"classes or more)"
        ) from None


def torchvision_split(dataset, data_dir, split):
    """A split ("train", "test", or STL-10's "unlabeled") of a torchvision dataset in data_dir as
    PIL images, downloaded there first if it is missing; .targets lists its labels (-1: none)."""
    spec = TORCHVISION[dataset]
    if dataset == "stl10":
        make = functools.partial(spec.dataset_class, data_dir, split=split)
    else:
        make = functools.partial(spec.dataset_class, data_dir, train=split == "train")
    try:
        return with_targets(make())
    except RuntimeError:
        pass  # not there yet
    try:
        return with_targets(make(download=True))
    except Exception as error:  # URLError, SSL, timeouts, a corrupt partial file: all end here
        raise InputError(
            f"{spec.name} is not in {data_dir} and the download failed ({error}); put "
            f"{spec.archive} or its extracted folder {spec.folder} into "
            f"{data_dir} (or pass --data-dir), then run again; or train on your own images "
            f"with --dataset folder --data-dir DIR (DIR/train/CLASS/*, DIR/test/CLASS/*)"
        ) from None


def with_targets(dataset):
    """dataset, with .targets also where torchvision calls them .labels (STL-10)."""
    if not hasattr(dataset, "targets"):
        dataset.targets = dataset.labels.tolist()
    return dataset


def balanced_subset_indices(targets, size, seed):
    """size indices drawn without replacement, as equal a share per class as possible, seeded."""
    classes = len(torch.as_tensor(targets).unique())
    per_class = [size // classes + (rank < size % classes) for rank in range(classes)]
    return indices_per_class(targets, lambda rank, members: per_class[rank], seed)


def indices_per_class(targets, count, seed):
    """Sorted indices drawn without replacement, count(class rank, its number of images) of each
    class, seeded."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.as_tensor(targets)
    chosen = []
    for rank, label in enumerate(targets.unique().tolist()):
        members = (targets == label).nonzero().flatten()
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[: count(rank, len(members))]])
    return torch.cat(chosen).sort().values.tolist()


def few_label_indices(targets, class_names, seed, per_class=None, fraction=None):
    """The labelled images of few-label training: per_class of each class, or fraction of each
    class's images (at least one), seeded -> sorted indices into targets."""
    counts = torch.as_tensor(targets).bincount(minlength=len(class_names)).tolist()
    if per_class and per_class > min(counts):
        smallest = counts.index(min(counts))
        raise InputError(
            f"--labels-per-class {per_class} is more than the {min(counts)} training images of "
            f"class {class_names[smallest]}: pass --labels-per-class {min(counts)} or less"
        )

    def count(rank, available):
        return per_class if per_class else max(1, round(fraction * available))

    return indices_per_class(targets, count, seed)


def check_batch_size(batch_size, images):
    if batch_size > images:
        raise InputError(
            f"--batch-size {batch_size} is larger than the {images} training images: "
            f"pass --batch-size {images} or less"
        )


def indices_in_whole(split):
    """The indices of a split (DataSource.split's: a Subset, or a whole split) into the whole."""
    if isinstance(split, torch.utils.data.Subset):
        return list(split.indices)
    return list(range(len(split)))


def spread_indices(length, count):
    """count indices spread evenly over range(length): a split sorted by class shows several."""
    return torch.linspace(0, length - 1, min(count, length)).long()


class Transformed(torch.utils.data.Dataset):
    """A split whose images (PIL, RGB) go through a transform; labels pass unchanged."""

    def __init__(self, split, transform):
        self.split, self.transform = split, transform

    def __len__(self):
        return len(self.split)

    def __getitem__(self, index):
        image, label = self.split[index]
        return self.transform(image), label


class UnlabelledImages(torch.utils.data.Dataset):
    """Image files without labels, as (PIL image, -1); samples lists (path, -1) and targets the
    -1s, like ImageFolder."""

    def __init__(self, paths):
        self.samples = [(path, -1) for path in paths]
        self.targets = [-1] * len(paths)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return rgb_loader(self.samples[index][0]), -1


def image_paths(folder, leave_out=()):
    """The image files anywhere under folder, sorted; hidden folders (the decoded cache's) and
    the folders named in leave_out are not entered."""
    paths = []
    for root, folders, names in os.walk(folder):
        folders[:] = [
            name
            for name in folders
            if not name.startswith(".") and os.path.join(root, name) not in leave_out
        ]
        paths += [os.path.join(root, name) for name in names if has_image_extension(name)]
    return sorted(paths)


def unlabelled_folder(data_dir):
    """The images anywhere under DIR/unlabeled/, sorted, or None without that folder."""
    folder = os.path.join(data_dir, UNLABELLED_FOLDER)
    if not os.path.isdir(folder):
        return None
    paths = image_paths(folder)
    if not paths:
        raise InputError(
            f"{folder} holds no images: put the unlabelled images in it (any depth), or remove it"
        )
    return UnlabelledImages(paths)


def without_labels(data_dir):
    """A folder that stage one can train on but that has no labels to measure with -> (what
    stage one trains on as its training split: UnlabelledImages, whether DIR/unlabeled/ joins
    it, why there are no labels, in words), or None for a labelled folder (check_folder_dataset
    then has the last word). Three such folders: DIR/unlabeled/* alone; images anywhere under
    DIR (a flat folder of photos), without DIR/train; DIR/train/CLASS/* of one class. A folder
    that does not exist is None too: check_folder_dataset names it."""
    train_dir = os.path.join(data_dir, "train")
    if not os.path.isdir(data_dir):
        return None
    if os.path.isdir(train_dir):
        classes = [entry.name for entry in os.scandir(train_dir) if entry.is_dir()]
        if len(classes) != 1:
            return None
        paths = image_paths(train_dir)
        why = f"{train_dir} has one class only ({classes[0]})"
        return (UnlabelledImages(paths), True, why) if paths else None
    if os.path.isdir(os.path.join(data_dir, UNLABELLED_FOLDER)):
        return unlabelled_folder(data_dir), False, f"{data_dir} holds {UNLABELLED_FOLDER}/ only"
    test_dir = os.path.join(data_dir, "test")  # never trained on, whatever it holds
    paths = image_paths(data_dir, leave_out=(test_dir,))
    if not paths:
        raise InputError(
            f"{data_dir} holds no images: put your images in it (any depth; .jpg, .png ...), or "
            f"lay it out as {data_dir}/train/CLASS/* and {data_dir}/test/CLASS/*"
        )
    return UnlabelledImages(paths), False, f"{data_dir} has no train/ and test/ class folders"


def monitor_of(source, knn_data_dir, seed):
    """The data of stage one's kNN monitor, a DataSource: stage one's own source where it has
    labels, else the labelled folder knn_data_dir (--knn-data-dir); None where neither is."""
    if source.labelled and knn_data_dir:
        raise InputError(
            f"--knn-data-dir is the kNN monitor's folder where --data-dir has no labels, and "
            f"{source.data_dir} has them: leave out --knn-data-dir"
        )
    if source.labelled:
        return source
    return DataSource("folder", knn_data_dir, 0, seed) if knn_data_dir else None


def data_seed_of(settings):
    """The seed of the data a run drew (its --subset, kNN queries, labels) from its settings (a
    config as a dict: config.json's, a stage-two evaluation's): --data-seed, else --seed (runs of
    before --data-seed drew their data with --seed)."""
    found = settings.get("data_seed")
    return settings["seed"] if found is None else found


def of_run(settings, dataset="", data_dir="", subset=None):
    """-> (dataset, data folder, subset) as a later script reads a run's data: those given, else
    the run's (settings: its config.json's, or a stage-two evaluation's)."""
    return (
        dataset or settings["dataset"],
        data_dir or settings["data_dir"],
        settings["subset"] if subset is None else subset,
    )


class DataSource:
    """One dataset, checked and listed once: its splits as PIL images with labels, the training
    subset, the class names and the normalisation statistics. seed: stage one's data seed
    (data_seed_of), which draws the subset and the images the normalisation is measured on."""

    def __init__(self, dataset, data_dir, subset=0, seed=0, labels_optional=False):
        """labels_optional: stage one's, which trains on a folder without labels too
        (without_labels); the DataSource then has no test split and no classes."""
        self.without_labels = None
        if dataset == "folder" and labels_optional:
            self.without_labels = without_labels(data_dir)
        if dataset == "folder" and not self.without_labels:
            check_labelled_folder(data_dir)
        if subset == 1:
            raise InputError(
                "--subset 1 leaves one training image, of one class: pass --subset 2 or more "
                "(0: all the training images)"
            )
        self.dataset, self.data_dir, self.subset, self.seed = dataset, data_dir, subset, seed

    @classmethod
    def of_run(cls, settings, dataset="", data_dir="", subset=None, labels_optional=False):
        """The data of a stage-one run (settings: its config.json's) as a later script reads it
        (of_run). The subset is drawn with stage one's data seed, whatever the later script's
        seeds: the same --subset is stage one's images."""
        chosen = of_run(settings, dataset, data_dir, subset)
        return cls(*chosen, data_seed_of(settings), labels_optional=labels_optional)

    @property
    def labelled(self):
        return self.without_labels is None

    @property
    def why_no_labels(self):
        """Why the folder has no labels, in words, or None where it has them."""
        return self.without_labels and self.without_labels[2]

    @functools.cache
    def full_split(self, train):
        """The whole split, images read as they are indexed (a folder without labels: its images,
        label -1 each, and no test split)."""
        if not self.labelled:
            return self.without_labels[0] if train else None
        if self.dataset in TORCHVISION:
            return torchvision_split(self.dataset, self.data_dir, "train" if train else "test")
        return torchvision.datasets.ImageFolder(
            os.path.join(self.data_dir, "train" if train else "test"),
            loader=rgb_loader,
            is_valid_file=has_image_extension,
        )

    @functools.cache
    def chosen_indices(self, train, size):
        """A seeded, class-balanced choice of size images of a split, or None: all of them."""
        targets = self.full_split(train).targets
        if not size or size >= len(targets):
            return None
        return balanced_subset_indices(targets, size, self.seed)

    def split(self, train, size=None):
        """A split cut to size images; by default the training split to --subset, the test split
        whole."""
        if size is None:
            size = self.subset if train else 0
        split, indices = self.full_split(train), self.chosen_indices(train, size)
        return split if indices is None else torch.utils.data.Subset(split, indices)

    @functools.cache
    def unlabelled_split(self):
        """Images without labels that stage one trains on beside the training split (STL-10's
        100,000, a folder's unlabeled/), or None."""
        if self.dataset == "stl10":
            return torchvision_split(self.dataset, self.data_dir, "unlabeled")
        if not self.labelled and not self.without_labels[1]:
            return None  # DIR/unlabeled/ is already the training split
        return unlabelled_folder(self.data_dir) if self.dataset == "folder" else None

    def pretraining_split(self):
        """Stage one's images: the training split cut to --subset, and the unlabelled images
        whole (their label -1 is never read)."""
        train, unlabelled = self.split(train=True), self.unlabelled_split()
        return train if unlabelled is None else torch.utils.data.ConcatDataset([train, unlabelled])

    def image_names(self, train):
        """A name per image of a whole split, in its order: its file, or its index in CIFAR-10."""
        if self.dataset in TORCHVISION:
            name = "train" if train else "test"
            indices = range(len(self.full_split(train)))
            return [f"{self.dataset} {name} #{index}" for index in indices]
        return [path for path, _ in self.full_split(train).samples]

    def training_indices(self):
        """The indices of the training split (cut to --subset) into the whole training split."""
        return indices_in_whole(self.split(train=True))

    def validation_indices(self, fraction, seed):
        """The training images held out to choose settings by: fraction of each class of the
        training split (cut to --subset), at least one, drawn with seed (stage two's data seed),
        never a test image -> sorted indices into the whole training split."""
        pool, targets = self.training_indices(), self.full_split(True).targets
        pool_targets = [targets[index] for index in pool]
        counts = torch.as_tensor(pool_targets).bincount().tolist()
        if any(max(1, round(fraction * count)) >= count for count in counts if count):
            fewest = min(count for count in counts if count)
            raise InputError(
                f"--validation-fraction {fraction:g} leaves no training image of a class of "
                f"{fewest}: pass a smaller fraction, or a larger --subset"
            )
        chosen = indices_per_class(
            pool_targets, lambda rank, count: max(1, round(fraction * count)), seed
        )
        return [pool[index] for index in chosen]

    def labelled_split(self, per_class=None, fraction=None, seed=0, held_out=()):
        """The training split (cut to --subset, less the held_out indices) whose labels train
        stage two: all of them, or a few of each class drawn with seed (stage two's data seed)
        -> (the split, its indices into the whole training split)."""
        full, held_out = self.full_split(True), set(held_out)
        pool_indices = [index for index in self.training_indices() if index not in held_out]
        if per_class or fraction:
            targets = [full.targets[index] for index in pool_indices]
            chosen = few_label_indices(targets, self.class_names, seed, per_class, fraction)
            pool_indices = [pool_indices[index] for index in chosen]
        if len(pool_indices) == len(full):
            return full, pool_indices
        return torch.utils.data.Subset(full, pool_indices), pool_indices

    @property
    def class_names(self):
        return list(self.full_split(False).classes) if self.labelled else []

    def normalisation(self, image_size):
        """CIFAR's published mean and std, or those measured on a sample of the training images of
        another dataset (the whole split, not the subset: the same for every --subset)."""
        published = TORCHVISION.get(self.dataset)
        if published and published.mean:
            return published.mean, published.std
        plain = Transformed(self.full_split(True), T.Compose([square(image_size), T.ToTensor()]))
        generator = torch.Generator().manual_seed(self.seed)
        sample = torch.randperm(len(plain), generator=generator)[:NORMALISATION_SAMPLE].tolist()
        pixels = torch.stack([plain[index][0] for index in sample]).transpose(0, 1).flatten(1)
        std = pixels.std(1)
        flat = [name for name, spread in zip(CHANNELS, std.tolist()) if spread < MIN_STD]
        if flat:
            where = f"{self.data_dir}/train" if self.dataset == "folder" else f"{self.dataset}'s"
            channels = f"{', '.join(flat)} channel{'s' if len(flat) > 1 else ''}"
            print(
                f"note: the {len(sample):,} training images of {where} measured for the "
                f"normalisation do not vary in their {channels} (standard deviation below one "
                f"grey level): divided by 1/255 there instead of by their standard deviation"
            )
        return tuple(pixels.mean(1).tolist()), tuple(std.clamp(min=MIN_STD).tolist())
