"""The per-image data path: torchvision transforms on one PIL image at a time, in DataLoader worker
processes, for datasets too large to keep on the device, and for stage two."""

import functools
import random

import torch
import torchvision.transforms as T

import distributed
import splits

RANK_SEED_STRIDE = 1_000_003  # a prime far above any number of DataLoader workers


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
    """No augmentation: splits.RESIZE_POLICY and normalisation (kNN, test split, test.py)."""
    return T.Compose([splits.square(image_size), T.ToTensor(), T.Normalize(mean, std)])


class SeededLoader(torch.utils.data.DataLoader):
    """A DataLoader whose order and worker seeds come from its own generator, not the global one."""

    def generators(self):
        """The generators that decide its order and augmentation (resume.py saves them)."""
        return [self.generator]


class ViewPairLoader(SeededLoader):
    """Stage one's training split as batches ((x1, x2), labels) of two augmented views."""

    def preview(self, count, seed=0):
        """-> (count images spread over the split, resized, in [0, 1]; their first views; their
        second views), the views normalised. Drawn from torch's random state forked and seeded
        here, so training draws the same with or without a preview."""
        split, two_views = self.dataset.split, self.dataset.transform
        chosen = splits.spread_indices(len(split), count).tolist()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pairs = [two_views(split[index][0]) for index in chosen]
        x1, x2 = (torch.stack(views) for views in zip(*pairs))
        size = list(x1.shape[-2:])
        originals = [T.functional.to_tensor(split[index][0]) for index in chosen]
        originals = torch.stack([splits.square(size[0])(image) for image in originals])
        return originals, x1, x2


def loader(dataset, batch_size, workers, shuffle, seed, drop_last=False, cls=SeededLoader):
    return cls(
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


def split_loaders(
    source,
    cfg,
    train_transform,
    plain_transform,
    augmented_split,
    plain_split,
    drop_last=False,
    test_size=0,
    cls=SeededLoader,
):
    """-> (augmented_split through train_transform, shuffled, a cls; plain_split and the test
    split (test_size of its images; 0: all) through plain_transform, in order) as loaders of
    cfg.batch_size."""

    def make(split, transform, shuffle, drop_last=False, cls=SeededLoader):
        dataset = splits.Transformed(split, transform)
        return loader(dataset, cfg.batch_size, cfg.workers, shuffle, cfg.seed, drop_last, cls)

    return (
        make(augmented_split, train_transform, shuffle=True, drop_last=drop_last, cls=cls),
        make(plain_split, plain_transform, shuffle=False),
        make(source.split(False, test_size), plain_transform, shuffle=False),
    )


def pretraining_loaders(source, cfg, spec, mean, std, knn_queries):
    """Stage one -> (augmented view pairs of the training split and the unlabelled images, plain
    training split, plain test split cut to knn_queries images) loaders."""
    views = TwoViews(simclr_augmentation(cfg.image_size, mean, std, spec))
    plain = eval_transform(cfg.image_size, mean, std)
    if distributed.world_size() > 1:
        return rank_loaders(source, cfg, views, plain, knn_queries)
    # drop_last: a small last batch would have few negatives and noisy BatchNorm statistics
    return split_loaders(
        source,
        cfg,
        views,
        plain,
        source.pretraining_split(),
        source.split(train=True),
        drop_last=True,
        test_size=knn_queries,
        cls=ViewPairLoader,
    )


class GlobalBatchSlices(torch.utils.data.Sampler):
    """Under torchrun: this rank's slice of each global batch of a shuffled order that every rank
    draws alike from the loader's generator, so the ranks together see one process's batches."""

    def __init__(self, size, batch_size, generator):
        self.size, self.batch_size, self.generator = size, batch_size, generator

    def __len__(self):
        return self.size // self.batch_size  # drop_last, as one process

    def __iter__(self):
        per_rank = self.batch_size // distributed.world_size()
        offset = distributed.rank() * per_rank
        order = torch.randperm(self.size, generator=self.generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start + offset : start + offset + per_rank].tolist()


class RankShard(torch.utils.data.Dataset):
    """This rank's shard of a dataset (distributed.shard_rows); padding rows: label -1."""

    def __init__(self, dataset):
        self.dataset, self.rows = dataset, distributed.shard_rows(len(dataset)).tolist()

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[index]
        return self.dataset[row] if row >= 0 else (self.dataset[0][0], -1)


def seed_worker_of_rank(rank, worker_id):
    """Worker seeds come from the loader's generator, alike on every rank: offset them by rank,
    so that the ranks' images do not share their augmentations."""
    seed = (torch.initial_seed() + RANK_SEED_STRIDE * rank) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)


def rank_loaders(source, cfg, views, plain, knn_queries):
    """pretraining_loaders under torchrun: each rank's slice of the global batches, and its shard
    of the kNN memory and queries. Each rank augments its own images, so unlike the device path
    the views depend on the number of ranks."""
    pretraining_split = source.pretraining_split()
    generator = torch.Generator().manual_seed(cfg.seed)
    view_pairs = ViewPairLoader(
        splits.Transformed(pretraining_split, views),
        batch_sampler=GlobalBatchSlices(len(pretraining_split), cfg.batch_size, generator),
        num_workers=cfg.workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=functools.partial(seed_worker_of_rank, distributed.rank()),
    )

    def shard(split):
        dataset = RankShard(splits.Transformed(split, plain))
        return loader(dataset, cfg.batch_size, cfg.workers, shuffle=False, seed=cfg.seed)

    return view_pairs, shard(source.split(train=True)), shard(source.split(False, knn_queries))


def linear_eval_loaders(source, cfg, image_size, mean, std, spec, labelled_split):
    """Stage two -> (crop + flip labelled split, plain labelled split, plain test split) loaders."""
    augmented = linear_train_transform(image_size, mean, std, spec)
    plain = eval_transform(image_size, mean, std)
    return split_loaders(source, cfg, augmented, plain, labelled_split, labelled_split)
