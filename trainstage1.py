"""Stage one: SimCLR pretraining of a CIFAR ResNet and projection head with the NT-Xent loss.

Reads CIFAR-10 (or --dataset folder --data-dir DIR) and writes into the run folder
runs/<dataset>-<arch>-<date-time>/: config.json, augmentations.png (view pairs to check by eye),
stage1_log.csv (one row per epoch), stage1_last.pth (every epoch) and stage1_best.pth (best kNN).
Ctrl-C or SIGTERM saves stage1_last.pth after the current step and exits; --resume --run-dir DIR
continues the run exactly where it stopped.

A CPU-sized run:
    python trainstage1.py --arch resnet18 --subset 2000 --batch-size 128 --epochs 2 --workers 2
"""

import dataclasses
import functools
import math
import time
import typing
import warnings

import torch
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

import config
import devicedata
import evaluate
import loaddataset
import net
import optimizers
import resume
import rundir

PREVIEW_PAIRS = 8  # image pairs drawn into augmentations.png
PREVIEW_SIDE = 96  # pixels per image in augmentations.png; 32x32 views are too small to judge
CHANCE_MARGIN = 0.01  # warn when the first epoch's loss is within 1% of ln(2N-1)
SYNC_EVERY = 10  # steps between reads of the running loss (progress bar, non-finite check)


def save_augmentation_preview(views_loader, mean, std, path):
    """Two rows of images: first views above, second views below, un-normalised. The random
    states are put back, so training draws the same with or without a preview (a run started over
    after a crash has none)."""
    states = resume.rng_state(views_loader)
    (x1, x2), _ = next(iter(views_loader))
    resume.set_rng_state(states, views_loader)
    pairs = min(PREVIEW_PAIRS, len(x1))
    views = torch.cat([x1[:pairs], x2[:pairs]]).float().cpu()
    views = views * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    scale = max(1, PREVIEW_SIDE // views.shape[-1])
    views = F.interpolate(views.clamp(0, 1), scale_factor=scale, mode="nearest")
    torchvision.utils.save_image(views, path, nrow=pairs, padding=4)


@dataclasses.dataclass
class Training:
    """What every step needs: the model and its optimizer, scaler, lr schedule and precision."""

    model: net.SimCLRNet
    forward: typing.Callable  # the model, or its torch.compile'd version (--compile)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr_at: typing.Callable[[int], float]  # 0-based global step -> lr
    amp_dtype: typing.Optional[torch.dtype]
    device: torch.device
    cfg: config.Pretrain


def start_training(cfg, device, steps_per_epoch):
    model = net.SimCLRNet(cfg.arch, cfg.proj_dim).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = config.autocast_dtype(cfg.precision, device)
    lr_at = functools.partial(
        optimizers.warmup_cosine,
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=cfg.warmup_epochs * steps_per_epoch,
        peak=optimizers.peak_lr(cfg),
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    optimizer = optimizers.make_optimizer(model, cfg)
    forward = torch.compile(model) if cfg.compile else model
    return Training(model, forward, optimizer, scaler, lr_at, amp_dtype, device, cfg)


def train_step(training, x1, x2):
    """One optimizer step on a batch of view pairs -> (loss, logits, targets), not yet synced."""
    cfg, device = training.cfg, training.device
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    # Both views in one forward pass, so BatchNorm normalises over all 2N images together.
    x = torch.cat([x1, x2]).to(device, non_blocking=True).contiguous(memory_format=memory_format)
    amp_dtype = training.amp_dtype
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        _, z = training.forward(x)
    logits, targets = net.contrastive_logits(*z.chunk(2), cfg.temperature)
    loss = F.cross_entropy(logits, targets)
    training.optimizer.zero_grad(set_to_none=True)
    training.scaler.scale(loss).backward()
    training.scaler.step(training.optimizer)
    training.scaler.update()
    return loss.detach(), logits.detach(), targets


@dataclasses.dataclass
class EpochTotals:
    """Running sums over one epoch's steps; a checkpoint taken mid-epoch keeps them, so the epoch's
    log row after a resume is the one an uninterrupted run writes."""

    steps: int = 0
    loss_sum: float = 0.0  # loss times anchors, summed
    correct: int = 0  # anchors whose positive is the most similar view
    anchors: int = 0
    images: int = 0
    seconds: float = 0.0

    def stats(self, lr, peak_memory):
        """The epoch's log columns."""
        return {
            "loss": round(self.loss_sum / self.anchors, 5),
            "lr": lr,
            "pair_accuracy": round(100.0 * self.correct / self.anchors, 3),
            "seconds": round(self.seconds, 2),
            "images_per_s": round(self.images / self.seconds, 1),
            "peak_memory_gib": "" if peak_memory is None else round(peak_memory, 2),
        }


def train_one_epoch(training, views_loader, epoch, progress, stop, totals):
    """Train from step totals.steps + 1 to the end of the epoch, or until a stop signal arrives
    (then totals.steps < len(views_loader)) -> (the updated totals, the last lr)."""
    training.model.train()
    device = training.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Sums stay on the device: reading a value every step would stall a GPU at every step.
    loss_sum = torch.tensor(totals.loss_sum, device=device)
    correct = torch.tensor(totals.correct, device=device)
    started = time.perf_counter() - totals.seconds
    for step_in_epoch, ((x1, x2), _) in enumerate(views_loader, start=1):
        if step_in_epoch <= totals.steps:
            continue  # trained before an interruption; drawn again so later draws match
        lr = training.lr_at((epoch - 1) * len(views_loader) + step_in_epoch - 1)
        optimizers.set_lr(training.optimizer, lr)
        try:
            loss, logits, targets = train_step(training, x1, x2)
        except torch.OutOfMemoryError:
            fail_out_of_memory(training, x1, x2)
        loss_sum += loss * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        totals.steps, totals.anchors, totals.images = (
            step_in_epoch,
            totals.anchors + len(targets),
            totals.images + len(x1),
        )
        progress.update()
        end_of_epoch = step_in_epoch == len(views_loader)
        if step_in_epoch % SYNC_EVERY == 0 or end_of_epoch or stop.received:
            mean_loss = loss_sum.item() / totals.anchors
            if not math.isfinite(mean_loss):
                config.fail(
                    f"the loss became {mean_loss} in epoch {epoch} by step {step_in_epoch}; "
                    f"usual causes: lr too high (try a smaller --lr), fp16 overflow (try "
                    f"--precision bf16 or fp32); stage1_last.pth is untouched"
                )
            speed = totals.images / (time.perf_counter() - started)
            progress.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.3g}", img_s=f"{speed:.0f}")
        # At the end of an epoch the loop runs out rather than breaks: running out draws the
        # sampler's last permutation, as the uninterrupted run does, before states are saved.
        if stop.received and not end_of_epoch:
            break
    totals.loss_sum, totals.correct = loss_sum.item(), correct.item()
    totals.seconds = time.perf_counter() - started
    return totals, lr


def fail_out_of_memory(training, x1, x2):
    """Find the largest halved batch whose step fits, then stop with it as the suggestion.
    The weights these trial steps change are never saved: the run stops here."""
    cfg, batch_size = training.cfg, len(x1)
    fits = None
    while fits is None and batch_size > 2:
        batch_size //= 2
        training.optimizer.zero_grad(set_to_none=True)
        if training.device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            train_step(training, x1[:batch_size], x2[:batch_size])
            fits = batch_size
        except torch.OutOfMemoryError:
            pass
    rescaled = f" (--lr-scaling {cfg.lr_scaling} adapts the lr)" if cfg.lr_scaling != "none" else ""
    suggestion = (
        f"--batch-size {fits} fits: rerun with it{rescaled}"
        if fits
        else "even --batch-size 2 does not fit: try a smaller --arch"
    )
    config.fail(
        f"out of {training.device.type} memory at --batch-size {cfg.batch_size} with "
        f"{cfg.arch}; {suggestion}"
    )


def knn_monitor(training, data, epoch, progress):
    """kNN top-1 (%) of the encoder when due this epoch, else None."""
    cfg = training.cfg
    if cfg.knn_every == 0 or (epoch % cfg.knn_every and epoch != cfg.epochs):
        return None
    knn_top1 = evaluate.knn_top1(
        training.model.encoder,
        data.memory_loader,
        data.test_loader,
        training.device,
        len(data.class_names),
        cfg.knn_k,
        cfg.knn_temperature,
        training.amp_dtype,
        cfg.channels_last,
    )
    progress.write(f"epoch {epoch}: kNN top-1 {knn_top1:.2f}%")
    return knn_top1


def make_checkpoint(training, epoch, knn_top1, best_knn_top1, data, resume_point):
    """Everything needed to rebuild the encoder without the command line that trained it, and
    (resume_point) to continue training from the step after the last one taken."""
    cfg = training.cfg
    return {
        "stage": 1,
        "epoch": epoch,  # whole epochs done
        "config": config.as_dict(cfg),
        "arch": cfg.arch,
        "stem": net.STEM,
        "feature_dim": training.model.feature_dim,
        "proj_dim": cfg.proj_dim,
        "image_size": cfg.image_size,
        "mean": list(data.mean),
        "std": list(data.std),
        "class_names": data.class_names,
        "knn_top1": knn_top1,
        "best_knn_top1": best_knn_top1,
        "model": training.model.state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "scaler": training.scaler.state_dict(),
        **resume_point,
    }


def resume_point(next_epoch_totals, rng_at_next_epoch):
    """Steps already taken in the next epoch, their sums, and the random states it started with."""
    return {
        "next_epoch_totals": dataclasses.asdict(next_epoch_totals),
        "rng": rng_at_next_epoch,
    }


def save_checkpoints(run, training, epoch, knn_top1, best_knn_top1, data):
    """stage1_last.pth every epoch; stage1_best.pth on a new best kNN (every epoch if kNN is off).
    -> the best kNN top-1 so far."""
    is_best = training.cfg.knn_every == 0 or (
        knn_top1 is not None and (best_knn_top1 is None or knn_top1 > best_knn_top1)
    )
    best_knn_top1 = knn_top1 if is_best and knn_top1 is not None else best_knn_top1
    at_next_epoch = resume_point(EpochTotals(), resume.rng_state(data.views_loader))
    checkpoint = make_checkpoint(training, epoch, knn_top1, best_knn_top1, data, at_next_epoch)
    rundir.save_checkpoint(run.path("stage1_last.pth"), checkpoint)
    if is_best:
        rundir.save_checkpoint(run.path("stage1_best.pth"), checkpoint)
    return best_knn_top1


def restore(training, checkpoint, views_loader):
    """Load a stage1_last.pth into training and the random states -> (epochs done, the next
    epoch's totals so far, best kNN top-1)."""
    rundir.load_strictly(training.model, checkpoint["model"], "stage1_last.pth")
    training.optimizer.load_state_dict(checkpoint["optimizer"])
    training.scaler.load_state_dict(checkpoint["scaler"])
    resume.set_rng_state(checkpoint["rng"], views_loader)
    totals = EpochTotals(**checkpoint["next_epoch_totals"])
    return checkpoint["epoch"], totals, checkpoint["best_knn_top1"]


def stop_on_signal(stop, run, training, epoch, totals, best_knn_top1, data, epoch_rng):
    """Save where a stop signal left the run and exit with how to continue it."""
    if totals.steps < len(data.views_loader):  # mid-epoch: the last whole epoch plus these steps
        checkpoint = make_checkpoint(
            training, epoch - 1, None, best_knn_top1, data, resume_point(totals, epoch_rng)
        )
        rundir.save_checkpoint(run.path("stage1_last.pth"), checkpoint)
    print(
        f"\nstopped by {stop.received.name} in epoch {epoch} after step {totals.steps}; saved "
        f"{run.path('stage1_last.pth')}. Continue with: "
        f"python trainstage1.py --resume --run-dir {run.dir}"
    )
    raise SystemExit(stop.exit_code)


def warn_if_at_chance(loss, batch_size):
    chance = math.log(2 * batch_size - 1)
    if abs(loss - chance) <= CHANCE_MARGIN * chance:
        warnings.warn(
            f"after epoch 1 the loss {loss:.3f} is still at chance level ln(2N-1) = "
            f"{chance:.3f}: nothing is being learned yet (check the lr and the data)",
            stacklevel=2,
        )


def open_run(cfg, checkpoint, training, data):
    """A new run folder, or the resumed one with the checkpoint's state restored ->
    (run, epochs done, the next epoch's totals so far or None, best kNN top-1 so far)."""
    if not cfg.resume:
        run = rundir.start_run(cfg)
        save_augmentation_preview(
            data.views_loader, data.mean, data.std, run.path("augmentations.png")
        )
        return run, 0, None, None
    if checkpoint is None:  # stopped before its first checkpoint: start over in the same folder
        return rundir.reopen_run(cfg.run_dir, "stage1_log.csv", 0), 0, None, None
    epochs_done, totals, best_knn_top1 = restore(training, checkpoint, data.views_loader)
    run = rundir.reopen_run(cfg.run_dir, "stage1_log.csv", epochs_done)
    return run, epochs_done, totals, best_knn_top1


def finish_epoch(run, training, data, epoch, totals, lr, best_knn_top1, progress):
    """kNN monitor when due, the log row, the checkpoints -> the best kNN top-1 so far."""
    device = training.device
    peak_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    knn_top1 = knn_monitor(training, data, epoch, progress)
    run.log(
        "stage1_log.csv",
        epoch=epoch,
        **totals.stats(lr, peak_memory),
        knn_top1="" if knn_top1 is None else round(knn_top1, 2),
    )
    if epoch == 1:
        warn_if_at_chance(totals.loss_sum / totals.anchors, training.cfg.batch_size)
    return save_checkpoints(run, training, epoch, knn_top1, best_knn_top1, data)


@config.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Pretrain, argv)
    cfg, checkpoint = resume.continue_run(cfg) if cfg.resume else (cfg, None)
    device = config.pick_device(cfg.device)
    if cfg.compile:
        config.check_compile(device)
    config.seed_everything(cfg.seed)
    on_device = devicedata.chosen(cfg, device)
    data_source = devicedata if on_device else loaddataset
    data = data_source.pretraining_data(cfg, device)
    steps_per_epoch = len(data.views_loader)
    training = start_training(cfg, device, steps_per_epoch)
    run, epochs_done, totals, best_knn_top1 = open_run(cfg, checkpoint, training, data)
    print(
        f"run folder {run.dir} | {cfg.arch} on {device}, data path: "
        f"{'device' if on_device else 'workers'} | "
        f"{steps_per_epoch} steps/epoch | {cfg.optimizer}, lr {optimizers.peak_lr(cfg):.4g}"
        f" after {cfg.warmup_epochs} warm-up epochs, then cosine to 0"
        + (f" | resuming after epoch {epochs_done}" if checkpoint else "")
    )
    done_steps = epochs_done * steps_per_epoch + (totals.steps if totals else 0)
    progress = tqdm(
        total=cfg.epochs * steps_per_epoch, initial=done_steps, desc="stage 1", unit="step"
    )
    with resume.StopSignal() as stop:
        for epoch in range(epochs_done + 1, cfg.epochs + 1):
            progress.set_description(f"stage 1, epoch {epoch}/{cfg.epochs}")
            epoch_rng = resume.rng_state(data.views_loader)
            totals, lr = train_one_epoch(
                training, data.views_loader, epoch, progress, stop, totals or EpochTotals()
            )
            if totals.steps == steps_per_epoch:
                best_knn_top1 = finish_epoch(
                    run, training, data, epoch, totals, lr, best_knn_top1, progress
                )
            if stop.received:
                stop_on_signal(stop, run, training, epoch, totals, best_knn_top1, data, epoch_rng)
            totals = None
    progress.close()
    print(
        f"done: {run.dir}/stage1_best.pth (best kNN top-1: {best_knn_top1}); "
        f"next: python trainstage2.py --run-dir {run.dir}"
    )


if __name__ == "__main__":
    main()
