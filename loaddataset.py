"""The one way into the data for both stages: CIFAR-10, CIFAR-100 or STL-10 via torchvision, or
an image folder (DIR/train/CLASS/*, DIR/test/CLASS/*, and DIR/unlabeled/* for stage one; labels
are unused in stage one, which also trains on a folder without any: datasets.without_labels).

Below it, simclr/datasets.py reads and checks the raw splits; simclr/loaders_device.py (uint8
tensors and batched augmentation on the device) and simclr/loaders_workers.py (PIL transforms in
DataLoader workers) build the loaders on them. Stage one's plan (config.stage_one_plan) picks
between those two paths, and pretraining_data takes the one it picked.
"""

import dataclasses
import typing

import torch

from simclr import augment, datasets, loaders_device, loaders_workers


class PretrainSources(typing.NamedTuple):
    """What stage one reads, before its plan: its data and the kNN monitor's, and their sizes."""

    source: datasets.DataSource
    monitor: typing.Optional[datasets.DataSource]  # its own, --knn-data-dir's, or None
    training_images: int  # of the training split (cut to --subset)
    pretraining_images: int  # and the unlabelled images that join it
    memory_images: int  # the monitor's training images, its memory bank (0: no monitor)
    test_images: int  # the monitor's whole test split, which its queries are drawn from


class PretrainData(typing.NamedTuple):
    """Stage one's data: its loaders, the data path they take and what the run records of it."""

    path: str  # "device" or "workers"
    views_loader: typing.Iterable  # ((x1, x2), labels): augmented view pairs
    memory_loader: typing.Optional[typing.Iterable]  # the plain training split: kNN's memory
    test_loader: typing.Optional[typing.Iterable]  # the test images kNN classifies, or None
    knn_queries: int
    class_names: list
    mean: tuple  # the training split's normalisation statistics
    std: tuple
    training_images: int  # of the training split (cut to --subset)
    unlabelled_images: int  # images without a label that joined the training split

    @property
    def images(self):
        """How many images stage one trains on, as its checkpoint records them: with the
        normalisation, what tells one dataset from another when a run resumes."""
        return {"training": self.training_images, "unlabelled": self.unlabelled_images}


class StageTwoData(typing.NamedTuple):
    """Stage two's data, at stage one's image size and normalisation."""

    train_loader: typing.Iterable  # the labelled training images with crop + flip
    plain_train_loader: typing.Iterable  # the same images, plain
    test_loader: typing.Iterable  # the whole plain test split
    validation_loader: typing.Optional[typing.Iterable]  # held-out training images, or None
    validation_images: int  # how many training images were held out
    class_names: list
    test_image_names: list
    labelled_images: list  # {"index", "image", "label"} of each labelled training image
    training_images: int  # how many training images the labels were drawn from (none held out)
    batch_size: int  # --batch-size, or all the labelled images where they are fewer
    stage_one_images: typing.Optional[typing.Iterable] = None  # a distillation's: distill_loader


def pretraining_sources(cfg):
    """Stage one's data, found and counted before its plan is made: the training split (and any
    unlabelled images) and the kNN monitor's data. cfg: a config.Pretrain."""
    seed = datasets.data_seed_of(dataclasses.asdict(cfg))
    source = datasets.DataSource(cfg.dataset, cfg.data_dir, cfg.subset, seed, labels_optional=True)
    training_images, pretraining_images = map(len, (source.split(True), source.pretraining_split()))
    datasets.check_batch_size(cfg.batch_size, pretraining_images)
    monitor = datasets.monitor_of(source, cfg.knn_data_dir, seed)
    if monitor is None and cfg.knn_every:
        print(
            f"note: {source.why_no_labels}, so stage one trains on its {pretraining_images:,} "
            f"images without labels and the kNN monitor is off (--knn-data-dir DIR names a "
            f"folder with labels for it); stage two, knn.py and the t-SNE's classes need such a "
            f"folder too (--data-dir DIR with DIR/train/CLASS/* and DIR/test/CLASS/*)"
        )
    return PretrainSources(
        source=source,
        monitor=monitor,
        training_images=training_images,
        pretraining_images=pretraining_images,
        memory_images=len(monitor.split(True)) if monitor else 0,
        test_images=len(monitor.full_split(False)) if monitor else 0,
    )


def pretraining_data(plan, sources, device):
    """Stage one's loaders as its plan (a config.StageOnePlan) has them: augmented view pairs of
    the training split and any unlabelled images, and the plain training split and a
    class-balanced choice of test images for the kNN monitor, on the plan's data path."""
    cfg, monitor = plan.settings, sources.monitor
    mean, std = sources.source.normalisation(
        cfg.image_size
    )  # decodes a folder: bad images end here
    shape = plan.augmentation, mean, std
    if plan.data_path == "device":
        loaders = loaders_device.pretraining_loaders(
            sources.source, cfg, *shape, device, monitor, plan.knn_queries
        )
    else:
        loaders = loaders_workers.pretraining_loaders(
            sources.source, cfg, *shape, monitor, plan.knn_queries
        )
    return PretrainData(
        path=plan.data_path,
        views_loader=loaders.views,
        memory_loader=loaders.memory,
        test_loader=loaders.test,
        knn_queries=plan.knn_queries,
        class_names=monitor.class_names if monitor else [],
        mean=mean,
        std=std,
        training_images=sources.training_images,
        unlabelled_images=sources.pretraining_images - sources.training_images,
    )


def stage_two_data(cfg, mode, stage1):
    """Stage two's data: cfg's dataset, data folder and subset (config.with_stage_two_defaults
    filled them in), the subset drawn with stage one's data seed, at stage one's image size and
    normalisation (stage1: a checkpoints.StageOne); for a mode (a
    config.StageTwoMode) taught by a teacher, every image stage one saw too."""
    seed = datasets.data_seed_of(stage1.settings)
    source = datasets.DataSource(cfg.dataset, cfg.data_dir, cfg.subset, seed)
    shape = stage1.image_size, stage1.mean, stage1.std
    data = labelled_data(cfg, source, *shape)
    if mode.from_teacher:
        stage_one_images = loaders_workers.distillation_loader(source, cfg, *shape, augment.SIMCLR)
        data = data._replace(stage_one_images=stage_one_images)
    return data


def labelled_data(cfg, source, image_size, mean, std):
    """Stage two: the labelled training images of source (all, or --labels-per-class /
    --label-fraction of them, drawn with the data seed, none of those held out by
    --validation-fraction) with crop + flip and plain, the held-out ones plain, and the plain
    test split, at stage one's image size and normalisation; labelled_images: each one's index in
    the whole training split, name and class; training_images: how many images the labels were
    drawn from. A batch holds at most all the labelled images, with a note when --batch-size asked
    for more (a classifier can train on fewer images than a batch; a contrastive batch cannot)."""
    seed = datasets.data_seed_of(dataclasses.asdict(cfg))
    held_out = []
    if cfg.validation_fraction:
        held_out = source.validation_indices(cfg.validation_fraction, seed)
    labelled_split, labelled = source.labelled_split(
        cfg.labels_per_class, cfg.label_fraction, seed, held_out
    )
    batch_size = cfg.batch_size
    if batch_size > len(labelled):
        print(
            f"note: --batch-size {batch_size} is more than the {len(labelled)} labelled images: "
            f"using {len(labelled)}"
        )
        batch_size = len(labelled)
    loaders = loaders_workers.stage_two_loaders(
        source,
        dataclasses.replace(cfg, batch_size=batch_size),
        image_size,
        mean,
        std,
        augment.SIMCLR,
        labelled_split,
        torch.utils.data.Subset(source.full_split(True), held_out) if held_out else None,
    )
    full, names = source.full_split(True), source.image_names(True)
    labelled_images = [
        {"index": index, "image": names[index], "label": source.class_names[full.targets[index]]}
        for index in labelled
    ]
    return StageTwoData(
        train_loader=loaders.train,
        plain_train_loader=loaders.plain_train,
        test_loader=loaders.test,
        validation_loader=loaders.validation,
        validation_images=len(held_out),
        class_names=source.class_names,
        test_image_names=source.image_names(False),
        labelled_images=labelled_images,
        training_images=len(source.split(train=True)) - len(held_out),
        batch_size=batch_size,
    )
