"""Datasets held on the training device as one uint8 tensor, served in batches drawn by index.

CIFAR-10 (and folder datasets of that size) fit in memory many times over: decoding them once and
augmenting whole batches on the device (simclr/augment_batched.py) removes PIL and worker processes from the
training loop, which otherwise starve a GPU. A folder dataset is decoded once and cached beside the
data (DIR/.simclr-cache/, or in $SIMCLR_CACHE_DIR), so the next run skips decoding.
"""

import hashlib
import os

import torch
import torchvision.transforms as T

from simclr import augment_batched
from simclr import loaders
from simclr import distributed
from simclr import runtime
from simclr import datasets

# Where a folder dataset's decoded images are cached: DIR/.simclr-cache/ by default, beside the
# data, so that one decoding serves every run and every clone that reads it; SIMCLR_CACHE_DIR
# moves it (a read-only data folder, a faster disk), one folder for any number of datasets, since
# a cache file is keyed by the files it was made from.
CACHE_FOLDER = ".simclr-cache"
CACHE_DIR_VARIABLE = "SIMCLR_CACHE_DIR"
# Images augmented at a time on a CPU: 256 32x32 images stay in cache between the augmentation's
# passes, about 1.5x the speed of one pass over a 512 batch (bench/throughput.py --augment-only).
CPU_AUGMENT_CHUNK = 256


def uint8_split(source, train, image_size, workers, size=None):
    """The images of source.split(train, size), and only those, as (images uint8 (N, 3, S, S),
    labels int64 (N,)): a small subset of a large folder decodes and caches only itself."""
    split, full = source.split(train, size), source.full_split(train)
    indices = split.indices if isinstance(split, torch.utils.data.Subset) else None
    name = "train" if train else "test"
    return uint8_images(source, full, indices, name, image_size, workers)


def uint8_pretraining_split(source, image_size, workers):
    """Stage one's images (source.pretraining_split) as (images uint8, labels, of which the first
    len(training split) are the training split's)."""
    images, labels = uint8_split(source, True, image_size, workers)
    unlabelled = source.unlabelled_split()
    if unlabelled is None:
        return images, labels
    more_images, more_labels = uint8_images(
        source, unlabelled, None, "unlabelled", image_size, workers
    )
    return torch.cat([images, more_images]), torch.cat([labels, more_labels])


def uint8_images(source, split, indices, name, image_size, workers):
    """The images of a whole split (indices None) or of those indices: a torchvision dataset's
    array, resized when image_size is not its own, or a folder's files, decoded and cached."""
    indices = range(len(split)) if indices is None else list(indices)
    if source.dataset in datasets.TORCHVISION:
        everything = len(indices) == len(split)  # no copy of STL-10's 2.8 GB unlabelled array
        images = torch.from_numpy(split.data if everything else split.data[indices])
        if not datasets.TORCHVISION[source.dataset].channels_first:
            images = images.permute(0, 3, 1, 2).contiguous()
        if images.shape[-1] != image_size:
            images = datasets.square(image_size)(images)
        return images, torch.tensor(split.targets)[list(indices)]
    samples = [split.samples[index] for index in indices]
    chosen = torch.utils.data.Subset(split, indices)
    return cached_folder_split(chosen, samples, source.data_dir, name, image_size, workers)


def file_fingerprint(path):
    """A file's size and modification time: a file replaced under its name changes them, so the
    cache keyed on them decodes it again (reading every file to hash it would cost what the cache
    saves)."""
    try:
        status = os.stat(path)
    except OSError:  # gone since it was listed: decoding it names it
        return "unreadable"
    return f"{status.st_size}:{status.st_mtime_ns}"


def cached_folder_split(split, samples, data_dir, name, image_size, workers):
    """A folder split (its (path, label) samples listed) decoded to uint8 at image_size by
    datasets.RESIZE_POLICY, from the cache in data_dir when one was made from the same files (each
    one's path, label, size and modification time), size and policy."""
    listing = "\n".join(f"{path}:{label}:{file_fingerprint(path)}" for path, label in samples)
    made_by = f"{image_size}\n{datasets.RESIZE_POLICY}\n{listing}"
    key = hashlib.sha1(made_by.encode()).hexdigest()[:16]
    cache_dir = os.environ.get(CACHE_DIR_VARIABLE) or os.path.join(data_dir, CACHE_FOLDER)
    cache_path = os.path.join(cache_dir, f"{name}-{key}.pt")
    if os.path.isfile(cache_path):
        cached = torch.load(cache_path, weights_only=True)
        return cached["images"], cached["labels"]
    decode = T.Compose([datasets.square(image_size), T.PILToTensor()])
    # Its own generator: drawing worker seeds from the global one would change the model's
    # initialisation between the run that decodes and the runs that read the cache.
    batches = torch.utils.data.DataLoader(
        datasets.Transformed(split, decode),
        batch_size=256,
        num_workers=workers,
        generator=torch.Generator(),
    )
    description = f"decoding {len(samples):,} {name} images once (cached for the next run)"
    decoded = runtime.progress(batches, desc=description, unit="batch")
    images, labels = map(torch.cat, zip(*decoded))
    try:  # the data folder may be read-only: then the next run decodes again, nothing worse
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        torch.save({"images": images, "labels": labels}, f"{cache_path}.tmp")
        os.replace(f"{cache_path}.tmp", cache_path)
    except OSError as error:
        print(f"note: could not cache the decoded images in {cache_path} ({error})")
    return images, labels


class ViewPairBatches:
    """Batches ((x1, x2), labels) of two augmented views, drawn from a seeded permutation.

    Like a DataLoader with shuffle and drop_last: len() is the number of batches per epoch, and
    each pass draws a new order. Under torchrun batch_size is the global batch: every rank draws
    the same order and the same augmentation parameters for the whole global batch and yields its
    own slice, so the views are those of a one-process run whatever the number of ranks.
    """

    def __init__(self, images, labels, batch_size, augmentation, seed, device):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.augmentation, self.device = batch_size, augmentation, device
        self.order_generator = torch.Generator().manual_seed(seed)
        self.augment_generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self):
        return len(self.images) // self.batch_size

    def __iter__(self):
        per_rank = distributed.batch_share(self.batch_size)
        mine = slice(distributed.rank() * per_rank, (distributed.rank() + 1) * per_rank)
        order = torch.randperm(len(self.images), generator=self.order_generator).to(self.device)
        for batch in order[: len(self) * self.batch_size].split(self.batch_size):
            images = self.images[batch[mine]]
            draw = self.augmentation.draw
            shape, generator = images.shape[2:], self.augment_generator
            first = draw(self.batch_size, shape, generator, self.device)
            second = draw(self.batch_size, shape, generator, self.device)
            x1 = self.augmentation.apply(images, first.rows(mine))
            x2 = self.second_view(images, second.rows(mine))
            yield (x1, x2), self.labels[batch[mine]]

    def second_view(self, images, parameters):
        """Augmented as the first, or with one_branch (the paper's Figure 5) the plain image;
        the second draw is made either way, so one_branch leaves the first views unchanged."""
        if self.augmentation.spec.one_branch:
            return self.augmentation.plain(images)
        return self.augmentation.apply(images, parameters)

    def generators(self):
        """The generators that decide the order and the augmentation (simclr/resume.py saves them)."""
        return [self.order_generator, self.augment_generator]

    def preview(self, count, seed=0):
        """-> (count images spread over the split, in [0, 1]; their first views; their second
        views), the views normalised, drawn from a generator of their own: training draws the same
        with or without a preview."""
        images = self.images[datasets.spread_indices(len(self.images), count)]
        generator = torch.Generator(device=self.device).manual_seed(seed)
        x1 = self.augmentation(images, generator)
        second = self.augmentation.draw(len(images), images.shape[2:], generator, self.device)
        return images.float() / 255, x1, self.second_view(images, second)


class PlainBatches:
    """Batches (normalised images, labels) in order, without augmentation (kNN, test split).
    Under torchrun, this rank's shard (distributed.shard_rows), padded with label -1."""

    def __init__(self, images, labels, batch_size, mean, std, device):
        if distributed.world_size() > 1:
            rows = distributed.shard_rows(len(images))
            images, labels = images[rows.clamp(min=0)], labels[rows.clamp(min=0)]
            labels[rows < 0] = -1
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, device=device)[:, None, None]
        self.std = torch.tensor(std, device=device)[:, None, None]

    def __len__(self):
        return -(-len(self.images) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.images), self.batch_size):
            images = self.images[start : start + self.batch_size].float() / 255
            yield (images - self.mean) / self.std, self.labels[start : start + self.batch_size]


def pretraining_loaders(source, cfg, spec, mean, std, device, monitor, knn_queries):
    """Stage one -> loaders.PretrainLoaders (augmented view pairs of the training split and the
    unlabelled images; for the kNN monitor, the plain training split and the plain test split cut
    to knn_queries images of monitor, source itself or a folder with labels, or None: none),
    served from uint8 tensors on the device."""
    images, labels = uint8_pretraining_split(source, cfg.image_size, cfg.workers)
    training_images = len(source.split(train=True))
    augmentation = augment_batched.BatchSimCLRAugmentation(
        cfg.image_size,
        mean,
        std,
        spec,
        chunk_size=CPU_AUGMENT_CHUNK if device.type == "cpu" else None,
        compile=cfg.compile,
    )
    views = ViewPairBatches(images, labels, cfg.batch_size, augmentation, cfg.seed, device)
    if monitor is None:
        return loaders.PretrainLoaders(views=views, memory=None, test=None)
    memory = images[:training_images], labels[:training_images]
    if monitor is not source:
        memory = uint8_split(monitor, True, cfg.image_size, cfg.workers)
    queries = uint8_split(monitor, False, cfg.image_size, cfg.workers, knn_queries)
    return loaders.PretrainLoaders(
        views=views,
        memory=PlainBatches(*memory, cfg.batch_size, mean, std, device),
        test=PlainBatches(*queries, cfg.batch_size, mean, std, device),
    )
