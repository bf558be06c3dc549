"""Stage one: SimCLR pretraining of a CIFAR ResNet and projection head with the NT-Xent loss.

Reads CIFAR-10 (or --dataset folder --data-dir DIR) and writes into the run folder
runs/<dataset>-<arch>-<date-time>/: config.json, augmentations.png (view pairs to check by eye),
stage1_log.csv (one row per epoch) and the checkpoint (every epoch; stage two evaluates the last).
Ctrl-C or SIGTERM saves the checkpoint after the current step and exits; --resume --run-dir DIR
continues the run exactly where it stopped. Under torchrun it trains data-parallel: --batch-size is
the global batch, split over the processes; rank 0 writes the files and prints.

A CPU-sized run:
    python trainstage1.py --arch resnet18 --subset 2000 --batch-size 128 --epochs 2 --workers 2
"""

import dataclasses
import math
import typing

import torch
import torch.nn.functional as F

import config
import loaddataset
import net
from simclr import checkpoints, distributed, errors, evaluate, optimizers, resume
from simclr import rundir, runtime, stage1_bookkeeping

SYNC_EVERY = 10  # steps between reads of the running loss (progress bar, non-finite check)


@dataclasses.dataclass
class Training:
    """What every step needs: the model and its optimizer, scaler, lr schedule and encoding."""

    model: net.SimCLRNet  # the plain network, as checkpoints hold it
    forward: typing.Callable  # the model, wrapped for data parallelism and --compile as called for
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr_at: typing.Callable[[int], float]  # 0-based global step -> lr
    encoding: runtime.Encoding  # device, autocast dtype, memory format
    cfg: config.Pretrain


def start_training(cfg, encoding, lr_at):
    """The model, optimizer and scaler of a new run, with its lr schedule lr_at, on encoding's
    device and in its memory format; the scaler is on where encoding autocasts to fp16."""
    device = encoding.device
    model = net.SimCLRNet(cfg.arch, cfg.proj_dim, cfg.stem, cfg.proj_layers)
    model.recompute_activations = cfg.activation_checkpointing
    if cfg.sync_batchnorm and distributed.world_size() > 1:
        model = distributed.sync_batchnorm(model, device)
    model = model.to(device)
    if encoding.channels_last:
        model = model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler(device.type, enabled=encoding.autocast_dtype is torch.float16)
    optimizer = optimizers.make_optimizer(model, cfg)
    forward = model
    if distributed.world_size() > 1:  # averages the gradients; starts every rank from rank 0's
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    if cfg.compile and cfg.activation_checkpointing:
        net.compile_stages(model.encoder)
    elif cfg.compile:
        forward = torch.compile(forward)
    return Training(model, forward, optimizer, scaler, lr_at, encoding, cfg)


def train_step(training, x1, x2):
    """One optimizer step on a batch of view pairs -> (loss, logits, targets), not yet synced."""
    # Both views in one forward pass, so BatchNorm normalises over all 2N images together.
    x = training.encoding.inputs(torch.cat([x1, x2]))
    with training.encoding.autocast():
        _, z = training.forward(x)
    logits, targets = net.contrastive_logits(
        *z.chunk(2), training.cfg.temperature, across_ranks=distributed.world_size() > 1
    )
    loss = F.cross_entropy(logits, targets)
    training.optimizer.zero_grad(set_to_none=True)
    training.scaler.scale(loss).backward()
    training.scaler.step(training.optimizer)
    training.scaler.update()
    return loss.detach(), logits.detach(), targets


@dataclasses.dataclass
class Pretraining:
    """The run in progress: its training bundle, data, rank 0's files, how far it got, its bar."""

    training: Training
    data: loaddataset.PretrainData
    files: stage1_bookkeeping.RunFiles
    progress: stage1_bookkeeping.Progress
    bar: typing.Any  # runtime.progress: tqdm on a terminal, a line per update in a log file


def train_epoch(pretraining, epoch, stop):
    """Train from the first step not yet taken to the end of the epoch, or until a stop signal
    arrives (then totals.steps < steps_per_epoch) -> (the epoch's totals, the last lr).
    Under torchrun, stop is a distributed.AgreedStop, read (a collective) at the due steps."""
    training, loader = pretraining.training, pretraining.data.views_loader
    steps_per_epoch = len(loader)
    pretraining.bar.set_description(f"stage 1, epoch {epoch}/{training.cfg.epochs}")
    pretraining.progress.epoch_rng = resume.rng_state(loader)
    totals, pretraining.progress.next_totals = (
        pretraining.progress.next_totals,
        stage1_bookkeeping.EpochTotals(),
    )
    device = training.encoding.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    running = stage1_bookkeeping.RunningEpoch(totals, device)
    training.model.train()
    every_step, shown_loss = distributed.world_size() == 1, "..."
    for step_in_epoch, ((x1, x2), _) in enumerate(loader, start=1):
        if step_in_epoch <= totals.steps:
            continue  # trained before an interruption; drawn again so later draws match
        lr = training.lr_at((epoch - 1) * steps_per_epoch + step_in_epoch - 1)
        optimizers.set_lr(training.optimizer, lr)
        try:
            running.add(step_in_epoch, *train_step(training, x1, x2))
        except torch.OutOfMemoryError:
            stage1_bookkeeping.fail_out_of_memory(train_step, training, x1, x2)
        end_of_epoch = step_in_epoch == steps_per_epoch
        # the first step too: an epoch shorter than SYNC_EVERY still shows its loss, and the
        # previous epoch's numbers do not linger
        due = step_in_epoch == 1 or step_in_epoch % SYNC_EVERY == 0 or end_of_epoch
        stopping = (due or every_step) and stop.received
        if due or stopping:
            mean_loss = running.mean_loss()  # a loss that is no longer finite ends the run
            if not math.isfinite(mean_loss):
                raise stage1_bookkeeping.nonfinite_loss(mean_loss, epoch, step_in_epoch)
            shown_loss = f"{mean_loss:.3f}"
        # before the bar moves, so that what it draws is this step's lr (the loss: the epoch's
        # mean when last read, at most SYNC_EVERY steps ago)
        speed = f"{running.images_per_s():.0f}"
        pretraining.bar.set_postfix(loss=shown_loss, lr=f"{lr:.3g}", img_s=speed, refresh=False)
        pretraining.bar.update()
        # At the end of an epoch the loop runs out rather than breaks: running out draws the
        # sampler's last permutation, as the uninterrupted run does, before states are saved.
        if stopping and not end_of_epoch:
            break
    last_step = (epoch - 1) * steps_per_epoch + totals.steps - 1
    return running.finish(), training.lr_at(last_step)


def knn_due(cfg, data, epoch):
    """Whether the kNN monitor runs after epoch: never on images without labels."""
    due = cfg.knn_every > 0 and (epoch % cfg.knn_every == 0 or epoch == cfg.epochs)
    return due and data.test_loader is not None


def knn_monitor(pretraining, epoch, stop):
    """kNN top-1 (%) of the encoder on the test split, every --knn-every epochs and after the
    last, else None; None too when a stop signal cuts the pass short."""
    cfg, data, training = pretraining.training.cfg, pretraining.data, pretraining.training
    if not knn_due(cfg, data, epoch):
        return None
    knn_top1 = evaluate.knn_top1(
        training.model.encoder,
        memory_loader=data.memory_loader,
        query_loader=data.test_loader,
        encoding=training.encoding,
        k=cfg.knn_k,
        temperature=cfg.knn_temperature,
        stop=stop,
    )
    if knn_top1 is not None:
        pretraining.bar.write(
            f"epoch {epoch}: kNN top-1 {knn_top1:.2f}% ({data.knn_queries:,} test images)"
        )
    return knn_top1


def finish_epoch(pretraining, epoch, totals, lr, stop):
    """kNN monitor when due, the log row, the checkpoint. A stop signal during the kNN pass
    saves the epoch as all steps taken, kNN not yet measured: --resume measures it and writes
    the row the uninterrupted run writes."""
    device = pretraining.training.encoding.device
    peak_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    knn_top1 = knn_monitor(pretraining, epoch, stop)
    if knn_top1 is None and knn_due(pretraining.training.cfg, pretraining.data, epoch):
        pretraining.files.save_unfinished_epoch(
            pretraining.training, epoch, totals, pretraining.progress
        )
        return
    if knn_top1 is not None:
        pretraining.progress.last_knn_top1 = knn_top1
    pretraining.files.log(epoch, totals, lr, peak_memory, knn_top1, pretraining.bar)
    pretraining.files.save_epoch(pretraining.training, epoch, knn_top1, pretraining.progress)


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Pretrain, argv)
    device = distributed.rank_device(runtime.pick_device(cfg.device))
    with distributed.process_group(device):
        train(cfg, device)


def train(cfg, device):
    """Stage one in this process: the whole run, or under torchrun this rank's part of it."""
    distributed.silence_other_ranks()
    with distributed.main_rank_first():
        rundir.check_path_fits(cfg.run_dir, "--run-dir")  # before any work is done
        cfg, checkpoint = resume.continue_run(cfg) if cfg.resume else (cfg, None)
        if checkpoint is not None:
            _, checkpoint_path = checkpoints.locate(1, cfg.run_dir)
            net.check_buildable(checkpoint, checkpoint_path)
        distributed.batch_share(cfg.batch_size)  # the run's batch, which --resume may have read
        if resume.finished(cfg, checkpoint):
            return
        if cfg.compile:
            runtime.check_compile(device, cfg.activation_checkpointing)
        # the weights' initialisation (DistributedDataParallel gives every rank rank 0's); the
        # order and the augmentation come from the loaders' own generators, alike on every rank
        runtime.seed_everything(cfg.seed)
        sources = loaddataset.pretraining_sources(cfg)  # the data found and counted
        plan = config.stage_one_plan(cfg, sources, device)  # cfg's defaults filled in too
        cfg = plan.settings
        data = loaddataset.pretraining_data(plan, sources, device)
        encoding = runtime.Encoding.of_settings(cfg, device)
        files = stage1_bookkeeping.RunFiles.open(plan, data, checkpoint, encoding)
    steps_per_epoch = len(data.views_loader)
    training = start_training(cfg, encoding, plan.lr_schedule(steps_per_epoch))
    progress = stage1_bookkeeping.restore(checkpoint, training, data.views_loader)
    files.announce(encoding, progress, resumed=checkpoint is not None)
    bar = runtime.progress(
        total=cfg.epochs * steps_per_epoch,
        initial=progress.steps_done(steps_per_epoch),
        desc="stage 1",
        unit="step",
        disable=not distributed.is_main(),
    )
    pretraining = Pretraining(training, data, files, progress, bar)
    with runtime.StopSignal() as own_stop:
        stop = (
            own_stop if distributed.world_size() == 1 else distributed.AgreedStop(own_stop, device)
        )
        for epoch in range(progress.epochs_done + 1, cfg.epochs + 1):
            totals, lr = train_epoch(pretraining, epoch, stop)
            if totals.steps == steps_per_epoch:
                finish_epoch(pretraining, epoch, totals, lr, stop)
            if stop.received:
                if totals.steps < steps_per_epoch:
                    files.save_unfinished_epoch(training, epoch, totals, progress)
                raise files.stopped(stop.received, epoch, totals)
    bar.close()
    files.done(progress)


if __name__ == "__main__":
    main()
