"""The one way into the data for both stages: CIFAR-10, CIFAR-100 or STL-10 via torchvision, or
an image folder (DIR/train/CLASS/*, DIR/test/CLASS/*, and DIR/unlabeled/* for stage one; labels
are unused in stage one).

Below it, simclr/datasets.py reads and checks the raw splits; simclr/loaders_device.py (uint8 tensors and batched
augmentation on the device) and simclr/loaders_workers.py (PIL transforms in DataLoader workers) build the
loaders on them. pretraining_data picks between those two paths.
"""

import collections
import dataclasses

import torch

from simclr import augment
import config
from simclr import loaders_device
from simclr import datasets
from simclr import loaders_workers

DEVICE_DATA_LIMIT_BYTES = 8 * 2**30  # "auto" keeps a training split on the device up to this size

PretrainData = collections.namedtuple(
    "PretrainData",
    "path views_loader memory_loader test_loader knn_queries class_names mean std "
    "unlabelled_images",
)
LinearEvalData = collections.namedtuple(
    "LinearEvalData",
    "train_loader plain_train_loader test_loader class_names test_image_names labelled_images "
    "training_images batch_size",
)


def data_path(cfg, training_images, device):
    """'device' or 'workers': --data-path, or for auto whether the uint8 training split fits."""
    if cfg.data_path != "auto":
        return cfg.data_path
    limit = DEVICE_DATA_LIMIT_BYTES
    if device.type == "cuda":  # leave most of the GPU's memory to the model
        limit = min(limit, torch.cuda.get_device_properties(device).total_memory // 8)
    return "device" if training_images * 3 * cfg.image_size**2 <= limit else "workers"


def pretraining_data(cfg, device):
    """Stage one: augmented view pairs of the training split and any unlabelled images, and the
    plain training split and a class-balanced choice of test images for the kNN monitor, on the
    data path that cfg and the device call for."""
    cfg = config.with_dataset_defaults(cfg)
    source = datasets.DataSource(cfg.dataset, cfg.data_dir, cfg.subset, cfg.seed)
    mean, std = source.normalisation(cfg.image_size)  # decodes a folder's images: bad ones end here
    training_images, pretraining_images = map(len, (source.split(True), source.pretraining_split()))
    datasets.check_batch_size(cfg.batch_size, pretraining_images)
    queries = config.knn_queries(cfg, training_images, len(source.full_split(False)))
    spec = dataclasses.replace(augment.SIMCLR, blur=cfg.blur)
    path = data_path(cfg, pretraining_images, device)
    if path == "device":
        loaders = loaders_device.pretraining_loaders(source, cfg, spec, mean, std, device, queries)
    else:
        loaders = loaders_workers.pretraining_loaders(source, cfg, spec, mean, std, queries)
    unlabelled = pretraining_images - training_images
    return PretrainData(path, *loaders, queries, source.class_names, mean, std, unlabelled)


def linear_eval_data(cfg, source, image_size, mean, std):
    """Stage two: the labelled training images of source (all, or --labels-per-class /
    --label-fraction of them, drawn with cfg.seed) with crop + flip and plain, and the plain test
    split, at stage one's image size and normalisation; labelled_images: each one's index in the
    whole training split, name and class; training_images: how many images the labels were drawn
    from. A batch holds at most all the labelled images, with a note when --batch-size asked for
    more (a classifier can train on fewer images than a batch; a contrastive batch cannot)."""
    labelled_split, labelled = source.labelled_split(
        cfg.labels_per_class, cfg.label_fraction, cfg.seed
    )
    batch_size = cfg.batch_size
    if batch_size > len(labelled):
        print(
            f"note: --batch-size {batch_size} is more than the {len(labelled)} labelled images: "
            f"using {len(labelled)}"
        )
        batch_size = len(labelled)
    loaders = loaders_workers.linear_eval_loaders(
        source,
        dataclasses.replace(cfg, batch_size=batch_size),
        image_size,
        mean,
        std,
        augment.SIMCLR,
        labelled_split,
    )
    full, names = source.full_split(True), source.image_names(True)
    labelled_images = [
        {"index": index, "image": names[index], "label": source.class_names[full.targets[index]]}
        for index in labelled
    ]
    return LinearEvalData(
        *loaders,
        source.class_names,
        source.image_names(False),
        labelled_images,
        len(source.split(train=True)),
        batch_size,
    )
