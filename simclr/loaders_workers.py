"""The per-image data path: torchvision transforms on one PIL image at a time, in DataLoader worker
processes, for datasets too large to keep on the device, and for stage two."""

import torch
import torchvision.transforms as T

from simclr import augment, distributed, loaders
from simclr import datasets


class SeededViews(torch.utils.data.Dataset):
    """A split whose images go through a random transform seeded per image: indexed by (index,
    seed), as SeededBatches draws them. The torchvision transforms draw from torch's global random
    state; seeding it for each image (inside fork_rng, which gives the state back) makes an image's
    views depend on its seed alone, not on which process, DataLoader worker or rank draws them, nor
    on anything drawn before."""

    def __init__(self, split, transform):
        self.split, self.transform = split, transform

    def __len__(self):
        return len(self.split)

    def __getitem__(self, index_and_seed):
        index, seed = index_and_seed
        image, label = self.split[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class SeededBatches(torch.utils.data.Sampler):
    """Batches of (index, seed) for SeededViews: each pass draws a shuffled order and a seed for
    every position from this sampler's own generator, alike on every rank. Under torchrun a rank
    yields its slice of each global batch (batch_size is the global batch), so the ranks together
    see the images and views of one process, whatever the number of ranks or of workers."""

    def __init__(self, size, batch_size, seed, drop_last):
        self.size, self.batch_size, self.drop_last = size, batch_size, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return self.size // self.batch_size if self.drop_last else -(-self.size // self.batch_size)

    def __iter__(self):
        share = distributed.batch_share(self.batch_size)
        order = torch.randperm(self.size, generator=self.generator).tolist()
        seeds = torch.randint(2**62, (self.size,), generator=self.generator).tolist()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            first = start + distributed.rank() * share
            yield list(zip(order[first : first + share], seeds[first : first + share]))


class SeededLoader(torch.utils.data.DataLoader):
    """Augmented batches of a split in a seeded order, each image's augmentation seeded too
    (SeededBatches): the same batches for any --workers, on any rank, after any resume."""

    def __init__(self, split, transform, cfg, drop_last):
        super().__init__(
            SeededViews(split, transform),
            batch_sampler=SeededBatches(len(split), cfg.batch_size, cfg.seed, drop_last),
            num_workers=cfg.workers,
            # its own generator for the workers' seeds, which nothing reads: the global random
            # state stays untouched
            generator=torch.Generator().manual_seed(cfg.seed),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=cfg.workers > 0,
        )

    def generators(self):
        """The generator that decides its order and augmentation (simclr/resume.py saves it)."""
        return [self.batch_sampler.generator]


class ViewPairLoader(SeededLoader):
    """Stage one's training split as batches ((x1, x2), labels) of two augmented views."""

    def preview(self, count, seed=0):
        """-> (count images spread over the split, resized, in [0, 1]; their first views; their
        second views), the views normalised. Drawn from torch's random state forked and seeded
        here, so training draws the same with or without a preview."""
        split, two_views = self.dataset.split, self.dataset.transform
        chosen = datasets.spread_indices(len(split), count).tolist()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pairs = [two_views(split[index][0]) for index in chosen]
        x1, x2 = (torch.stack(views) for views in zip(*pairs))
        size = list(x1.shape[-2:])
        originals = [T.functional.to_tensor(split[index][0]) for index in chosen]
        originals = torch.stack([datasets.square(size[0])(image) for image in originals])
        return originals, x1, x2


def plain_loader(dataset, batch_size, workers):
    """A dataset's items in order, without augmentation (kNN, test split, encoding passes)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        generator=torch.Generator(),  # the workers' seeds, not drawn from the global state
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


class RankShard(torch.utils.data.Dataset):
    """This rank's shard of a dataset (distributed.shard_rows); padding rows: label -1."""

    def __init__(self, dataset):
        self.dataset, self.rows = dataset, distributed.shard_rows(len(dataset)).tolist()

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[index]
        return self.dataset[row] if row >= 0 else (self.dataset[0][0], -1)


def plain_split_loader(split, transform, cfg):
    """split through transform, in order; under torchrun, this rank's shard of it."""
    dataset = datasets.Transformed(split, transform)
    if distributed.world_size() > 1:
        dataset = RankShard(dataset)
    return plain_loader(dataset, cfg.batch_size, cfg.workers)


def pretraining_loaders(source, cfg, spec, mean, std, monitor, knn_queries):
    """Stage one -> loaders.PretrainLoaders (augmented view pairs of the training split and the
    unlabelled images; for the kNN monitor, the plain training split and the plain test split cut
    to knn_queries images of monitor, source itself or a folder with labels, or None: none);
    under torchrun, this rank's slice of every global batch and its shard of the kNN memory and
    queries."""
    views = augment.view_pairs(cfg.image_size, mean, std, spec)
    plain = augment.eval_transform(cfg.image_size, mean, std)
    # drop_last: a small last batch would have few negatives and noisy BatchNorm statistics
    view_pairs = ViewPairLoader(source.pretraining_split(), views, cfg, drop_last=True)
    if monitor is None:
        return loaders.PretrainLoaders(views=view_pairs, memory=None, test=None)
    return loaders.PretrainLoaders(
        views=view_pairs,
        memory=plain_split_loader(monitor.split(train=True), plain, cfg),
        test=plain_split_loader(monitor.split(False, knn_queries), plain, cfg),
    )


def stage_two_loaders(source, cfg, image_size, mean, std, spec, labelled_split, held_out):
    """Stage two -> loaders.StageTwoLoaders (crop + flip labelled split, plain labelled split,
    plain test split, and the plain held_out training images where there are any)."""
    augmented = augment.linear_train_transform(image_size, mean, std, spec)
    plain = augment.eval_transform(image_size, mean, std)
    # A last batch of one image is dropped: BatchNorm in training mode (fine-tuning, head layers)
    # cannot normalise one image's features; any other last batch trains.
    lone_last = len(labelled_split) % cfg.batch_size == 1
    return loaders.StageTwoLoaders(
        train=SeededLoader(labelled_split, augmented, cfg, drop_last=lone_last),
        plain_train=plain_split_loader(labelled_split, plain, cfg),
        test=plain_split_loader(source.split(train=False), plain, cfg),
        validation=plain_split_loader(held_out, plain, cfg) if held_out else None,
    )


def distillation_loader(source, cfg, image_size, mean, std, spec):
    """SimCLRv2's distillation: every image stage one saw (the training split cut to --subset and
    the unlabelled images) with stage two's crop + flip, in seeded batches; their labels are never
    read. drop_last: a last batch of a few images would give noisy BatchNorm statistics."""
    images = source.pretraining_split()
    datasets.check_batch_size(cfg.batch_size, len(images))
    augmented = augment.linear_train_transform(image_size, mean, std, spec)
    return SeededLoader(images, augmented, cfg, drop_last=True)
