"""A stage-one encoder looked at without training it (knn.py, pictures.py): the run's network, or
a random one of its architecture, and its h and z of plain images of any dataset.

Images are seen as stage one's test images were: resized to its image size and normalised with its
mean and std, whatever dataset they come from, since those are what the encoder learned on.
"""

import os
import typing

import torch

from simclr import augment, checkpoints, datasets, evaluate, loaders_workers, provenance
from simclr import rundir, runtime


class LoadedEncoder(typing.NamedTuple):
    """A stage-one network loaded to look at its encoder (knn.py, pictures.py)."""

    run: rundir.Run
    stage1: checkpoints.StageOne  # the checkpoint read
    source: str  # the checkpoint's path, or "random ARCH (seed N)"
    weights: str  # for titles beside the run's name: "FILE (epoch N)", or as source
    model: torch.nn.Module  # net.SimCLRNet, in eval mode, on the device
    encoding: runtime.Encoding


class Features(typing.NamedTuple):
    h: torch.Tensor  # (N, feature_dim) float32: the encoder's output
    z: torch.Tensor  # (N, proj_dim) float32: the projection head's output
    labels: torch.Tensor  # (N,)


def stage_one(cfg, rebuild):
    """The run's stage-one network: its checkpoint's weights, or with --random the same
    architecture freshly initialised from --seed. rebuild: net.from_stage_one."""
    run_dir, path = checkpoints.locate(1, cfg.run_dir, cfg.checkpoint)
    stage1 = checkpoints.read_stage_one(path, run_dir)
    device = runtime.pick_device(cfg.device)
    runtime.seed_everything(cfg.seed)
    model = rebuild(stage1.checkpoint, path, with_weights=not cfg.random)
    if cfg.random:
        source = weights = f"random {stage1.arch} (seed {cfg.seed})"
    else:
        source = f"{path} ({stage1.trained})"
        weights = f"{os.path.basename(path)} ({stage1.trained})"
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(device).eval()
    encoding = runtime.Encoding.of_settings(cfg, device)
    return LoadedEncoder(rundir.Run(run_dir), stage1, source, weights, model, encoding)


def data_source(cfg, stage1, labels_optional=False):
    """--dataset, --data-dir and --subset, each stage one's where not given; labels_optional:
    a folder without labels is taken as it is (datasets.without_labels)."""
    return datasets.DataSource.of_run(
        stage1.settings, cfg.dataset, cfg.data_dir, cfg.subset, labels_optional
    )


@torch.no_grad()
def plain_features(loaded, split, cfg, description):
    """h and z of every image of split (no augmentation), in order, and its labels (loaded: a
    LoadedEncoder)."""
    stage1 = loaded.stage1
    transform = augment.eval_transform(stage1.image_size, stage1.mean, stage1.std)
    loader = loaders_workers.plain_loader(
        datasets.Transformed(split, transform), cfg.batch_size, cfg.workers
    )
    h, labels = evaluate.extract_features(
        loaded.model.encoder, loader, loaded.encoding, description
    )
    return Features(h, loaded.model.projector(h), labels)


def knn_provenance(cfg, loaded, memory, queries):
    """What made a kNN top-1 (simclr/provenance.py): knn.py's settings as used (cfg, with the
    data, k and temperature filled in), in the precision in effect; the encoder by content (or
    the random one's architecture and --seed, which are settings) and the memory and queries'
    sizes; knn_predict's version."""
    settings = provenance.settings(cfg, precision=loaded.encoding.in_effect["precision"])
    inputs = checkpoints.stage_one_inputs(loaded.stage1, with_weights=not cfg.random)
    inputs |= {"memory_images": len(memory.labels), "query_images": len(queries.labels)}
    return provenance.record(settings, inputs, {"recipe": "knn", "version": evaluate.KNN_VERSION})
