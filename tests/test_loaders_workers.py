"""The per-image path: each image's views seeded by the loader's own generator, so the batches do
not depend on --workers, on the global random state or on the number of torchrun processes."""

import random
import types

import numpy as np
import pytest
import torch

from simclr import augment
from simclr import distributed
from simclr import datasets
from simclr import loaders_workers

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def view_loader(image_folder, workers, batch_size=8, seed=0):
    source = datasets.DataSource("folder", str(image_folder))
    views = augment.TwoViews(augment.simclr_augmentation(32, MEAN, STD, augment.SIMCLR))
    cfg = types.SimpleNamespace(batch_size=batch_size, seed=seed, workers=workers)
    return loaders_workers.ViewPairLoader(source.pretraining_split(), views, cfg, drop_last=True)


def epochs_of(loader, epochs=2):
    """[(x1, x2, labels) of every batch] of each epoch; the global random states are scrambled
    between batches, as anything else in the process might draw from them."""
    drawn = []
    for _ in range(epochs):
        for (x1, x2), labels in loader:
            drawn.append((x1, x2, labels))
            random.random(), np.random.rand(), torch.rand(3)
    return drawn


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for batch, other in zip(first, second):
        for tensor, other_tensor in zip(batch, other):
            assert torch.equal(tensor, other_tensor)


def test_the_views_depend_on_the_seed_alone_not_on_workers_or_the_global_random_state(
    image_folder,
):
    """--workers may change on --resume because of this; and a resumed rank restores rank 0's
    global states, so they must not decide its views either."""
    torch.manual_seed(1)
    in_process = epochs_of(view_loader(image_folder, workers=0))
    torch.manual_seed(2)
    random.seed(2)
    in_workers = epochs_of(view_loader(image_folder, workers=2))
    assert_same_batches(in_process, in_workers)
    x1, x2, _ = in_process[0]
    assert x1.shape == (8, 3, 32, 32) and not torch.equal(x1, x2)
    other_seed = epochs_of(view_loader(image_folder, workers=0, seed=1))
    assert not torch.equal(other_seed[0][0], x1)
    assert not torch.equal(in_process[3][0], x1)  # the second epoch draws new views


def test_each_rank_takes_its_slice_of_the_one_process_batches(image_folder, monkeypatch):
    """Under torchrun --batch-size is the global batch: two ranks together see exactly the images
    and views of one process (a rank that took the same slice as another, or augmented its slice
    with draws of its own, would not)."""
    whole = epochs_of(view_loader(image_folder, workers=0))
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    ranks = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        ranks.append(epochs_of(view_loader(image_folder, workers=0)))
    for batch, first, second in zip(whole, *ranks):
        for tensor, part, other_part in zip(batch, first, second):
            assert len(part) == len(other_part) == 4
            assert torch.equal(torch.cat([part, other_part]), tensor)


def test_a_global_batch_that_the_ranks_cannot_share_is_refused(image_folder, monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(distributed.InputError, match="--batch-size 8 .* does not divide among 3"):
        next(iter(view_loader(image_folder, workers=0)))


def test_stage_two_batches_keep_every_labelled_image_once_per_epoch(image_folder):
    source = datasets.DataSource("folder", str(image_folder))
    transform = augment.linear_train_transform(32, MEAN, STD, augment.SIMCLR)
    cfg = types.SimpleNamespace(batch_size=5, seed=0, workers=0)
    loader = loaders_workers.SeededLoader(source.split(train=True), transform, cfg, drop_last=False)
    sizes = [len(labels) for _, labels in loader]
    assert sizes == [5, 5, 5, 5, 4] and len(loader) == 5  # 24 images, the last batch kept
    labels = torch.cat([labels for _, labels in loader])
    assert labels.bincount().tolist() == [8, 8, 8]
