"""Stage one: SimCLR pretraining of a CIFAR ResNet and projection head with the NT-Xent loss.

Reads CIFAR-10 (or --dataset folder --data-dir DIR) and writes into the run folder
runs/<dataset>-<arch>-<date-time>/: config.json, augmentations.png (view pairs to check by eye),
stage1_log.csv (one row per epoch), stage1_last.pth (every epoch) and stage1_best.pth (best kNN).

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
import rundir

PREVIEW_PAIRS = 8  # image pairs drawn into augmentations.png
PREVIEW_SIDE = 96  # pixels per image in augmentations.png; 32x32 views are too small to judge
CHANCE_MARGIN = 0.01  # warn when the first epoch's loss is within 1% of ln(2N-1)
SYNC_EVERY = 10  # steps between reads of the running loss (progress bar, non-finite check)


def save_augmentation_preview(views_loader, mean, std, path):
    """Two rows of images: first views above, second views below, un-normalised."""
    (x1, x2), _ = next(iter(views_loader))
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


def train_one_epoch(training, views_loader, epoch, progress):
    """One pass over the view pairs -> the epoch's mean loss, last lr, pair accuracy, speed."""
    training.model.train()
    device = training.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    anchors, images = 0, 0
    started = time.perf_counter()
    for step_in_epoch, ((x1, x2), _) in enumerate(views_loader, start=1):
        lr = training.lr_at((epoch - 1) * len(views_loader) + step_in_epoch - 1)
        optimizers.set_lr(training.optimizer, lr)
        loss, logits, targets = train_step(training, x1, x2)
        # Sums stay on the device: reading a value every step would stall a GPU at every step.
        loss_sum += loss * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        anchors += len(targets)
        images += len(x1)
        progress.update()
        if step_in_epoch % SYNC_EVERY == 0 or step_in_epoch == len(views_loader):
            mean_loss = loss_sum.item() / anchors
            if not math.isfinite(mean_loss):
                config.fail(
                    f"the loss became {mean_loss} in epoch {epoch} by step {step_in_epoch}; "
                    f"usual causes: lr too high (try a smaller --lr), fp16 overflow (try "
                    f"--precision bf16 or fp32); stage1_last.pth is untouched"
                )
            speed = images / (time.perf_counter() - started)
            progress.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.3g}", img_s=f"{speed:.0f}")
    seconds = time.perf_counter() - started
    peak_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "loss": round(loss_sum.item() / anchors, 5),
        "lr": lr,
        "pair_accuracy": round(100.0 * correct.item() / anchors, 3),
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
        "peak_memory_gib": "" if peak_memory is None else round(peak_memory, 2),
    }


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


def make_checkpoint(training, epoch, knn_top1, best_knn_top1, data):
    """Everything needed to rebuild the encoder without the command line that trained it."""
    cfg = training.cfg
    return {
        "stage": 1,
        "epoch": epoch,
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
    }


def save_checkpoints(run, training, epoch, knn_top1, best_knn_top1, data):
    """stage1_last.pth every epoch; stage1_best.pth on a new best kNN (every epoch if kNN is off).
    -> the best kNN top-1 so far."""
    is_best = training.cfg.knn_every == 0 or (
        knn_top1 is not None and (best_knn_top1 is None or knn_top1 > best_knn_top1)
    )
    best_knn_top1 = knn_top1 if is_best and knn_top1 is not None else best_knn_top1
    checkpoint = make_checkpoint(training, epoch, knn_top1, best_knn_top1, data)
    rundir.save_checkpoint(run.path("stage1_last.pth"), checkpoint)
    if is_best:
        rundir.save_checkpoint(run.path("stage1_best.pth"), checkpoint)
    return best_knn_top1


def warn_if_at_chance(loss, batch_size):
    chance = math.log(2 * batch_size - 1)
    if abs(loss - chance) <= CHANCE_MARGIN * chance:
        warnings.warn(
            f"after epoch 1 the loss {loss:.3f} is still at chance level ln(2N-1) = "
            f"{chance:.3f}: nothing is being learned yet (check the lr and the data)",
            stacklevel=2,
        )


def main(argv=None):
    cfg = config.parse(config.Pretrain, argv)
    device = config.pick_device(cfg.device)
    if cfg.compile:
        config.check_compile(device)
    config.seed_everything(cfg.seed)
    data_source = devicedata if devicedata.chosen(cfg, device) else loaddataset
    data = data_source.pretraining_data(cfg, device)
    run = rundir.start_run(cfg)
    save_augmentation_preview(data.views_loader, data.mean, data.std, run.path("augmentations.png"))
    steps_per_epoch = len(data.views_loader)
    training = start_training(cfg, device, steps_per_epoch)
    print(
        f"run folder {run.dir} | {cfg.arch} on {device}, data path: {data_source.__name__} | "
        f"{steps_per_epoch} steps/epoch | {cfg.optimizer}, lr {optimizers.peak_lr(cfg):.4g}"
        f" after {cfg.warmup_epochs} warm-up epochs, then cosine to 0"
    )
    progress = tqdm(total=cfg.epochs * steps_per_epoch, desc="stage 1", unit="step")
    best_knn_top1 = None
    for epoch in range(1, cfg.epochs + 1):
        progress.set_description(f"stage 1, epoch {epoch}/{cfg.epochs}")
        stats = train_one_epoch(training, data.views_loader, epoch, progress)
        knn_top1 = knn_monitor(training, data, epoch, progress)
        run.log(
            "stage1_log.csv",
            epoch=epoch,
            **stats,
            knn_top1="" if knn_top1 is None else round(knn_top1, 2),
        )
        best_knn_top1 = save_checkpoints(run, training, epoch, knn_top1, best_knn_top1, data)
        if epoch == 1:
            warn_if_at_chance(stats["loss"], cfg.batch_size)
    progress.close()
    print(
        f"done: {run.dir}/stage1_best.pth (best kNN top-1: {best_knn_top1}); "
        f"next: python trainstage2.py --run-dir {run.dir}"
    )


if __name__ == "__main__":
    main()
