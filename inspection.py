"""What the scripts that measure or picture a stage-one encoder without training it share (knn.py,
pictures.py): the run's network, its dataset (or another one), and h and z of plain images.

Images are seen as stage one's test images were: resized to its image size and normalised with its
mean and std, whatever dataset they come from, since those are what the encoder learned on.
"""

import os
import typing

import torch

import config
import distributed
import evaluate
import net
import rundir
import runtime
import splits
import workerdata


class StageOne(typing.NamedTuple):
    run: rundir.Run
    checkpoint: dict  # as trainstage1.py saved it: settings, image size, mean, std, weights
    source: str  # the checkpoint's path, or "random ARCH (seed N)"
    weights: str  # for titles beside the run's name: "stage1_last.pth (epoch N)", or as source
    model: net.SimCLRNet  # in eval mode, on the device
    encoding: evaluate.Encoding


class Features(typing.NamedTuple):
    h: torch.Tensor  # (N, feature_dim) float32: the encoder's output
    z: torch.Tensor  # (N, proj_dim) float32: the projection head's output
    labels: torch.Tensor  # (N,)


def start(settings_class, argv, script):
    """knn.py's and pictures.py's start -> (their settings, the run's stage-one network, the
    dataset it is looked at on)."""
    cfg = config.parse(settings_class, argv)
    distributed.refuse_several_processes(script)
    stage1 = stage_one(cfg)
    return cfg, stage1, data_source(cfg, stage1.checkpoint)


def stage_one(cfg):
    """The run's stage-one network: its checkpoint's weights, or with --random the same
    architecture freshly initialised from --seed."""
    run = rundir.Run(rundir.resolve_run_dir(cfg.run_dir, "stage1_last.pth"))
    path = cfg.checkpoint or run.path("stage1_last.pth")
    checkpoint = rundir.load_checkpoint(path, stage=1)
    device = runtime.pick_device(cfg.device)
    runtime.seed_everything(cfg.seed)
    model = net.SimCLRNet(checkpoint["arch"], checkpoint["config"]["proj_dim"], checkpoint["stem"])
    if cfg.random:
        source = weights = f"random {checkpoint['arch']} (seed {cfg.seed})"
    else:
        rundir.load_strictly(model, checkpoint["model"], path)
        source = f"{path} (epoch {checkpoint['epoch']})"
        weights = f"{os.path.basename(path)} (epoch {checkpoint['epoch']})"
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(device).eval()
    encoding = evaluate.Encoding.of_settings(cfg, device)
    return StageOne(run, checkpoint, source, weights, model, encoding)


def data_source(cfg, checkpoint):
    """--dataset, --data-dir and --subset, each stage one's where not given."""
    return splits.DataSource.of_run(checkpoint["config"], cfg.dataset, cfg.data_dir, cfg.subset)


@torch.no_grad()
def plain_features(stage1, split, cfg, description):
    """h and z of every image of split (no augmentation), in order, and its labels."""
    checkpoint = stage1.checkpoint
    transform = workerdata.eval_transform(
        checkpoint["image_size"], checkpoint["mean"], checkpoint["std"]
    )
    loader = workerdata.plain_loader(
        splits.Transformed(split, transform), cfg.batch_size, cfg.workers
    )
    h, labels = evaluate.extract_features(
        stage1.model.encoder, loader, stage1.encoding, description
    )
    return Features(h, stage1.model.projector(h), labels)
