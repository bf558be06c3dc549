"""Datasets held on the training device as one uint8 tensor, served in batches drawn by index.

CIFAR-10 (and folder datasets of that size) fit in memory many times over: decoding them once and
augmenting whole batches on the device (batchaugment.py) removes PIL and worker processes from the
training loop, which otherwise starve a GPU. A folder dataset is decoded once and cached beside the
data (DIR/.simclr-cache/), so the next run skips decoding.
"""

import hashlib
import os

import torch
import torchvision.transforms as T

import batchaugment
import loaddataset

DEVICE_DATA_LIMIT_BYTES = 8 * 2**30  # "auto" keeps a training split on the device up to this size
CIFAR10_TRAIN_IMAGES = 50000
CACHE_FOLDER = ".simclr-cache"
# Images augmented at a time on a CPU: 256 32x32 images stay in cache between the augmentation's
# passes, about 1.5x the speed of one pass over a 512 batch (bench/throughput.py --augment-only).
CPU_AUGMENT_CHUNK = 256


def uint8_split(dataset, data_dir, train, image_size, workers):
    """One split as (images uint8 (N, 3, S, S), labels int64 (N,), class names)."""
    if dataset == "cifar10":
        split = loaddataset.cifar10(data_dir, train, None)
        images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
        if images.shape[-1] != image_size:
            images = T.functional.resize(images, [image_size, image_size], antialias=True)
        return images, torch.tensor(split.targets), list(split.classes)
    return cached_folder_split(data_dir, train, image_size, workers)


def cached_folder_split(data_dir, train, image_size, workers):
    """A folder split decoded to uint8 at image_size, from the cache when its file list matches."""
    decode = T.Compose([T.Resize((image_size, image_size)), T.PILToTensor()])
    split = loaddataset.image_dataset("folder", data_dir, train, decode)
    listing = "\n".join(f"{path}:{label}" for path, label in split.samples)
    key = hashlib.sha1(f"{image_size}\n{listing}".encode()).hexdigest()[:16]
    cache_path = os.path.join(data_dir, CACHE_FOLDER, f"{'train' if train else 'test'}-{key}.pt")
    if os.path.isfile(cache_path):
        cached = torch.load(cache_path, weights_only=True)
        return cached["images"], cached["labels"], split.classes
    # Its own generator: drawing worker seeds from the global one would change the model's
    # initialisation between the run that decodes and the runs that read the cache.
    batches = torch.utils.data.DataLoader(
        split, batch_size=256, num_workers=workers, generator=torch.Generator()
    )
    images, labels = map(torch.cat, zip(*batches))
    try:  # the data folder may be read-only: then the next run decodes again, nothing worse
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        torch.save({"images": images, "labels": labels}, f"{cache_path}.tmp")
        os.replace(f"{cache_path}.tmp", cache_path)
    except OSError as error:
        print(f"note: could not cache the decoded images in {cache_path} ({error})")
    return images, labels, split.classes


def chosen(cfg, device):
    """Whether to use the device path: --data-path device, or auto and the uint8 split fits."""
    if cfg.data_path != "auto":
        return cfg.data_path == "device"
    if cfg.dataset == "cifar10":
        count = CIFAR10_TRAIN_IMAGES
    else:
        loaddataset.check_folder_dataset(cfg.data_dir)
        count = len(loaddataset.image_dataset(cfg.dataset, cfg.data_dir, True, None))
    count = min(count, cfg.subset) if cfg.subset else count
    limit = DEVICE_DATA_LIMIT_BYTES
    if device.type == "cuda":  # leave most of the GPU's memory to the model
        limit = min(limit, torch.cuda.get_device_properties(device).total_memory // 8)
    return count * 3 * cfg.image_size**2 <= limit


class ViewPairBatches:
    """Batches ((x1, x2), labels) of two augmented views, drawn from a seeded permutation.

    Like a DataLoader with shuffle and drop_last: len() is the number of batches per epoch, and
    each pass draws a new order.
    """

    def __init__(self, images, labels, batch_size, augmentation, seed, device):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.augmentation, self.device = batch_size, augmentation, device
        self.order_generator = torch.Generator().manual_seed(seed)
        self.augment_generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self):
        return len(self.images) // self.batch_size

    def __iter__(self):
        order = torch.randperm(len(self.images), generator=self.order_generator).to(self.device)
        for batch in order[: len(self) * self.batch_size].split(self.batch_size):
            images = self.images[batch]
            x1 = self.augmentation(images, self.augment_generator)
            x2 = self.augmentation(images, self.augment_generator)
            yield (x1, x2), self.labels[batch]


class PlainBatches:
    """Batches (normalised images, labels) in order, without augmentation (kNN, test split)."""

    def __init__(self, images, labels, batch_size, mean, std, device):
        self.images, self.labels, self.batch_size = images.to(device), labels.to(device), batch_size
        self.mean = torch.tensor(mean, device=device)[:, None, None]
        self.std = torch.tensor(std, device=device)[:, None, None]

    def __len__(self):
        return -(-len(self.images) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.images), self.batch_size):
            images = self.images[start : start + self.batch_size].float() / 255
            yield (images - self.mean) / self.std, self.labels[start : start + self.batch_size]


def pretraining_data(cfg, device):
    """loaddataset.PretrainData whose loaders serve from uint8 tensors on the device."""
    if cfg.dataset == "folder":
        loaddataset.check_folder_dataset(cfg.data_dir)
    mean, std = loaddataset.normalisation(cfg.dataset, cfg.data_dir, cfg.image_size, cfg.seed)
    train_images, train_labels, _ = uint8_split(
        cfg.dataset, cfg.data_dir, True, cfg.image_size, cfg.workers
    )
    if cfg.subset and cfg.subset < len(train_images):
        chosen = torch.tensor(
            loaddataset.balanced_subset_indices(train_labels, cfg.subset, cfg.seed)
        )
        train_images, train_labels = train_images[chosen], train_labels[chosen]
    loaddataset.check_batch_size(cfg.batch_size, train_images)
    test_images, test_labels, class_names = uint8_split(
        cfg.dataset, cfg.data_dir, False, cfg.image_size, cfg.workers
    )
    augmentation = batchaugment.BatchSimCLRAugmentation(
        cfg.image_size,
        mean,
        std,
        cfg.blur,
        chunk_size=CPU_AUGMENT_CHUNK if device.type == "cpu" else None,
        compile=cfg.compile,
    )
    return loaddataset.PretrainData(
        views_loader=ViewPairBatches(
            train_images, train_labels, cfg.batch_size, augmentation, cfg.seed, device
        ),
        memory_loader=PlainBatches(train_images, train_labels, cfg.batch_size, mean, std, device),
        test_loader=PlainBatches(test_images, test_labels, cfg.batch_size, mean, std, device),
        class_names=class_names,
        mean=mean,
        std=std,
    )
