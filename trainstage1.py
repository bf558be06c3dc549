"""Stage one: SimCLR pretraining of a CIFAR ResNet and projection head with the NT-Xent loss.

Reads CIFAR-10 (or --dataset folder --data-dir DIR) and writes into the run folder
runs/<dataset>-<arch>-<date-time>/: config.json, augmentations.png (view pairs to check by eye),
stage1_log.csv (one row per epoch) and stage1_last.pth (every epoch; stage two evaluates the last).
Ctrl-C or SIGTERM saves stage1_last.pth after the current step and exits; --resume --run-dir DIR
continues the run exactly where it stopped. Under torchrun it trains data-parallel: --batch-size is
the global batch, split over the processes; rank 0 writes the files and prints.

A CPU-sized run:
    python trainstage1.py --arch resnet18 --subset 2000 --batch-size 128 --epochs 2 --workers 2
"""

import dataclasses
import math
import time
import typing

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw, ImageFont
import config
import distributed
import errors
import evaluate
import loaddataset
import net
import optimizers
import resume
import rundir
import runtime

PREVIEW_PAIRS = 8  # image pairs drawn into augmentations.png
PREVIEW_SIDE = 96  # pixels per image in augmentations.png; 32x32 views are too small to judge
PREVIEW_CAPTION_WIDTH = 80  # pixels left of the images for the row captions
CHANCE_MARGIN = 0.01  # warn when the first epoch's loss is within 1% of ln(2N-1)
SYNC_EVERY = 10  # steps between reads of the running loss (progress bar, non-finite check)
LOG_NAME = "stage1_log.csv"


def save_augmentation_preview(views_loader, mean, std, path):
    """Three captioned rows, enlarged: training images as they are, their first views and their
    second views (un-normalised), drawn apart from training's random states."""
    originals, x1, x2 = views_loader.preview(PREVIEW_PAIRS)
    mean, std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    views = [originals.float().cpu()] + [
        (x.float().cpu() * std + mean).clamp(0, 1) for x in (x1, x2)
    ]
    scale = max(1, PREVIEW_SIDE // x1.shape[-1])
    grid = torchvision.utils.make_grid(
        F.interpolate(torch.cat(views), scale_factor=scale, mode="nearest"),
        nrow=len(x1),
        padding=4,
        pad_value=1,
    )
    grid = TF.to_pil_image(grid)
    canvas = Image.new("RGB", (grid.width + PREVIEW_CAPTION_WIDTH, grid.height), "white")
    canvas.paste(grid, (PREVIEW_CAPTION_WIDTH, 0))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=16)
    row_height = (grid.height - 4) / 3
    for row, caption in enumerate(("image", "view 1", "view 2")):
        draw.text((8, 4 + row_height * (row + 0.5)), caption, fill="black", font=font, anchor="lm")
    canvas.save(path)


@dataclasses.dataclass
class Training:
    """What every step needs: the model and its optimizer, scaler, lr schedule and encoding."""

    model: net.SimCLRNet  # the plain network, as checkpoints hold it
    forward: typing.Callable  # the model, wrapped for data parallelism and --compile as called for
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr_at: typing.Callable[[int], float]  # 0-based global step -> lr
    encoding: evaluate.Encoding  # device, autocast dtype, memory format
    cfg: config.Pretrain


def start_training(cfg, encoding, steps_per_epoch):
    """The model, optimizer, scaler and lr schedule of a new run, on encoding's device and in its
    memory format; the scaler is on where encoding autocasts to fp16."""
    device = encoding.device
    model = net.SimCLRNet(cfg.arch, cfg.proj_dim, cfg.stem)
    if cfg.sync_batchnorm and distributed.world_size() > 1:
        model = distributed.sync_batchnorm(model, device)
    model = model.to(device)
    if encoding.channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr_at = optimizers.schedule(
        optimizers.peak_lr(cfg), cfg.epochs, steps_per_epoch, optimizers.warmup_epochs(cfg)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=encoding.autocast_dtype is torch.float16)
    optimizer = optimizers.make_optimizer(model, cfg)
    forward = model
    if distributed.world_size() > 1:  # averages the gradients; starts every rank from rank 0's
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    forward = torch.compile(forward) if cfg.compile else forward
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


def fail_out_of_memory(training, x1, x2):
    """Find the largest halved batch whose step fits, then stop with it as the suggestion.
    The weights these trial steps change are never saved: the run stops here."""
    cfg, batch_size, device = training.cfg, len(x1), training.encoding.device
    if distributed.world_size() > 1:  # a trial step is a collective: the ranks cannot try apart
        raise errors.InputError(
            f"out of {device.type} memory at --batch-size {cfg.batch_size} with {cfg.arch} "
            f"({batch_size} per process); try --batch-size {cfg.batch_size // 2}"
        )
    fits = None
    while fits is None and batch_size > 2:
        batch_size //= 2
        training.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
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
    raise errors.InputError(
        f"out of {device.type} memory at --batch-size {cfg.batch_size} with "
        f"{cfg.arch}; {suggestion}"
    )


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


class RunningEpoch:
    """An epoch's totals while its steps run, over the global batch. The sums stay on the device:
    reading a value every step would stall a GPU at every step. Under torchrun each rank sums its
    own anchors (rank 0 from the saved sums of a resumed epoch) and reading adds the ranks up."""

    def __init__(self, totals, device):
        self.totals, self.world = totals, distributed.world_size()
        saved = distributed.is_main()  # the saved sums are counted once, on rank 0
        self.loss_sum = torch.tensor(totals.loss_sum if saved else 0.0, device=device)
        self.correct = torch.tensor(totals.correct if saved else 0, device=device)
        self.started = time.perf_counter() - totals.seconds

    def add(self, step_in_epoch, loss, logits, targets):
        self.loss_sum += loss * len(targets)
        self.correct += (logits.argmax(1) == targets).sum()
        totals, anchors = self.totals, len(targets) * self.world
        totals.steps, totals.anchors = step_in_epoch, totals.anchors + anchors
        totals.images += anchors // 2  # two views, hence two anchors, per image

    def sums(self):
        """(loss sum, correct anchors) over every rank, read back from the device."""
        sums = torch.stack([self.loss_sum.double(), self.correct.double()])
        if self.world > 1:
            sums = distributed.summed_over_ranks(sums)
        loss_sum, correct = sums.tolist()
        return loss_sum, int(correct)

    def mean_loss(self):
        return self.sums()[0] / self.totals.anchors

    def images_per_s(self):
        return self.totals.images / (time.perf_counter() - self.started)

    def finish(self):
        """-> the totals, with the sums read back from the device."""
        self.totals.loss_sum, self.totals.correct = self.sums()
        self.totals.seconds = time.perf_counter() - self.started
        return self.totals


def chance_warning(loss, batch_size):
    """-> a warning line when the first epoch's loss is still at ln(2N-1), else None."""
    chance = math.log(2 * batch_size - 1)
    if abs(loss - chance) <= CHANCE_MARGIN * chance:
        return (
            f"warning: after epoch 1 the loss {loss:.3f} is still at chance level ln(2N-1) = "
            f"{chance:.3f}: nothing is being learned yet (check the lr and the data)"
        )
    return None


class Pretraining:
    """One stage-one run: its folder, training bundle, data, progress bar and last kNN top-1.

    A new run creates its folder; a resumed one reopens it and restores stage1_last.pth (None: it
    stopped before its first checkpoint and starts over). The methods train an epoch, finish it
    (kNN, log row, checkpoint) and save and stop on a signal. Under torchrun every rank trains and
    measures; rank 0 alone has the run folder (run) and writes.
    """

    def __init__(self, cfg, encoding, data, checkpoint, run):
        self.cfg, self.data, self.run = cfg, data, run
        self.steps_per_epoch = len(data.views_loader)
        self.training = start_training(cfg, encoding, self.steps_per_epoch)
        self.epochs_done, self.next_totals, self.last_knn_top1 = 0, EpochTotals(), None
        self.resumed = checkpoint is not None
        if self.resumed:
            self.restore(checkpoint)

    def restore(self, checkpoint):
        """Load a stage1_last.pth: weights, optimizer, scaler, progress and random states."""
        training = self.training
        rundir.load_strictly(training.model, checkpoint["model"], "stage1_last.pth")
        training.optimizer.load_state_dict(checkpoint["optimizer"])
        training.scaler.load_state_dict(checkpoint["scaler"])
        resume.set_rng_state(checkpoint["rng"], self.data.views_loader)
        self.epochs_done = checkpoint["epoch"]
        self.next_totals = EpochTotals(**checkpoint["next_epoch_totals"])
        self.last_knn_top1 = checkpoint.get("last_knn_top1")

    def start(self):
        """Rank 0 says what runs where; every rank opens the progress bar (rank 0's is shown)."""
        if self.run is not None:
            self.announce()
        done_steps = self.epochs_done * self.steps_per_epoch + self.next_totals.steps
        self.progress = runtime.progress(
            total=self.cfg.epochs * self.steps_per_epoch,
            initial=done_steps,
            desc="stage 1",
            unit="step",
            disable=not distributed.is_main(),
        )

    def announce(self):
        """Say in one line what runs where, with the lr schedule in effect."""
        cfg, warmup = self.cfg, optimizers.warmup_epochs(self.cfg)
        resuming = (
            f" | resuming in epoch {self.epochs_done + 1} after step {self.next_totals.steps} "
            f"of {self.steps_per_epoch}"
            if self.resumed
            else ""
        )
        world = distributed.world_size()
        processes = f" x {world} processes (global batch {cfg.batch_size})" if world > 1 else ""
        unlabelled = self.data.unlabelled_images
        unlabelled = f" (with {unlabelled:,} unlabelled images)" if unlabelled else ""
        warmup_steps = runtime.counted(
            optimizers.warmup_steps(warmup, self.steps_per_epoch), "step"
        )
        encoding = self.training.encoding
        in_effect = "{precision}, {memory_format}".format(**encoding.in_effect)
        print(
            f"run folder {self.run.dir} | {cfg.arch} on {encoding.device} in {in_effect}"
            f"{processes}, "
            f"data path: {self.data.path} | {self.steps_per_epoch} steps/epoch{unlabelled} | "
            f"{cfg.optimizer}, lr {optimizers.peak_lr(cfg):.4g} after {warmup:g} warm-up epochs "
            f"({warmup_steps}), then cosine to 0{resuming}"
        )
        if warmup >= cfg.epochs:
            print(
                f"note: --warmup-epochs {warmup:g} is not less than --epochs {cfg.epochs}: the lr "
                f"never reaches its peak nor decays; leave --warmup-epochs out for a fitting one"
            )

    def train_epoch(self, epoch, stop):
        """Train from the first step not yet taken to the end of the epoch, or until a stop signal
        arrives (then totals.steps < steps_per_epoch) -> (the epoch's totals, the last lr).
        Under torchrun, stop is a distributed.AgreedStop, read (a collective) at the due steps."""
        self.progress.set_description(f"stage 1, epoch {epoch}/{self.cfg.epochs}")
        self.epoch_rng = resume.rng_state(self.data.views_loader)
        totals, self.next_totals = self.next_totals, EpochTotals()
        device = self.training.encoding.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        running = RunningEpoch(totals, device)
        self.training.model.train()
        every_step = distributed.world_size() == 1
        for step_in_epoch, ((x1, x2), _) in enumerate(self.data.views_loader, start=1):
            if step_in_epoch <= totals.steps:
                continue  # trained before an interruption; drawn again so later draws match
            lr = self.training.lr_at((epoch - 1) * self.steps_per_epoch + step_in_epoch - 1)
            optimizers.set_lr(self.training.optimizer, lr)
            try:
                running.add(step_in_epoch, *train_step(self.training, x1, x2))
            except torch.OutOfMemoryError:
                fail_out_of_memory(self.training, x1, x2)
            self.progress.update()
            end_of_epoch = step_in_epoch == self.steps_per_epoch
            # the first step too: an epoch shorter than SYNC_EVERY still shows its loss, and the
            # previous epoch's numbers do not linger
            due = step_in_epoch == 1 or step_in_epoch % SYNC_EVERY == 0 or end_of_epoch
            stopping = (due or every_step) and stop.received
            if due or stopping:
                self.report(running, epoch, step_in_epoch, lr)
            # At the end of an epoch the loop runs out rather than breaks: running out draws the
            # sampler's last permutation, as the uninterrupted run does, before states are saved.
            if stopping and not end_of_epoch:
                break
        last_step = (epoch - 1) * self.steps_per_epoch + totals.steps - 1
        return running.finish(), self.training.lr_at(last_step)

    def report(self, running, epoch, step_in_epoch, lr):
        """The running loss on the progress bar; a loss that is no longer finite ends the run."""
        mean_loss = running.mean_loss()
        if not math.isfinite(mean_loss):
            raise errors.InputError(
                f"the loss became {mean_loss} in epoch {epoch} by step {step_in_epoch}; "
                f"usual causes: lr too high (try a smaller --lr), fp16 overflow (try "
                f"--precision bf16 or fp32); stage1_last.pth is untouched",
                on_every_rank=True,  # the loss of the global batch
            )
        speed = running.images_per_s()
        self.progress.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.3g}", img_s=f"{speed:.0f}")

    def knn_due(self, epoch):
        cfg = self.cfg
        return cfg.knn_every > 0 and (epoch % cfg.knn_every == 0 or epoch == cfg.epochs)

    def knn_monitor(self, epoch, stop):
        """kNN top-1 (%) of the encoder when due this epoch, else None; None too when a stop
        signal cuts the pass short."""
        cfg, data = self.cfg, self.data
        if not self.knn_due(epoch):
            return None
        knn_top1 = evaluate.knn_top1(
            self.training.model.encoder,
            data.memory_loader,
            data.test_loader,
            self.training.encoding,
            cfg.knn_k,
            cfg.knn_temperature,
            stop,
        )
        if knn_top1 is not None:
            self.progress.write(
                f"epoch {epoch}: kNN top-1 {knn_top1:.2f}% ({data.knn_queries:,} test images)"
            )
        return knn_top1

    def finish_epoch(self, epoch, totals, lr, stop):
        """kNN monitor when due, the log row, the checkpoint. A stop signal during the kNN pass
        saves the epoch as all steps taken, kNN not yet measured: --resume measures it and writes
        the row the uninterrupted run writes."""
        device = self.training.encoding.device
        peak_memory = (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        )
        knn_top1 = self.knn_monitor(epoch, stop)
        if knn_top1 is None and self.knn_due(epoch):
            self.save_unfinished_epoch(epoch, totals)
            return
        if knn_top1 is not None:
            self.last_knn_top1 = knn_top1
        if self.run is None:
            return
        self.run.log(
            LOG_NAME,
            epoch=epoch,
            **totals.stats(lr, peak_memory),
            knn_top1="" if knn_top1 is None else round(knn_top1, 2),
        )
        warning = epoch == 1 and chance_warning(
            totals.loss_sum / totals.anchors, self.cfg.batch_size
        )
        if warning:  # through the bar, so it neither breaks the bar's line nor echoes source
            self.progress.write(warning)
        self.save_checkpoint(epoch, knn_top1)

    def checkpoint(self, epoch, knn_top1, next_epoch_totals, rng_at_next_epoch):
        """Everything needed to rebuild the encoder without the command line that trained it,
        and to continue training from the step after the last one taken: the steps already
        taken in the next epoch, their sums, and the random states that epoch started with."""
        cfg, training, data = self.cfg, self.training, self.data
        return {
            "stage": 1,
            "epoch": epoch,  # whole epochs done
            "config": config.as_dict(cfg),
            "arch": cfg.arch,
            "stem": cfg.stem,
            "feature_dim": training.model.feature_dim,
            "proj_dim": cfg.proj_dim,
            "image_size": cfg.image_size,
            "mean": list(data.mean),
            "std": list(data.std),
            "class_names": data.class_names,
            "knn_top1": knn_top1,
            "last_knn_top1": self.last_knn_top1,
            "model": training.model.state_dict(),
            "optimizer": training.optimizer.state_dict(),
            "scaler": training.scaler.state_dict(),
            "next_epoch_totals": dataclasses.asdict(next_epoch_totals),
            "rng": rng_at_next_epoch,
        }

    def save_checkpoint(self, epoch, knn_top1):
        """stage1_last.pth, every epoch. No "best" checkpoint is kept: the kNN monitor measures on
        the test split, and a checkpoint chosen there would bias the test accuracy stage two
        reports; like the paper, stage two evaluates the final one."""
        rng = resume.rng_state(self.data.views_loader)
        checkpoint = self.checkpoint(epoch, knn_top1, EpochTotals(), rng)
        rundir.save_checkpoint(self.run.path("stage1_last.pth"), checkpoint)

    def save_unfinished_epoch(self, epoch, totals):
        """stage1_last.pth as the last whole epoch plus this epoch's steps so far (all of them
        when only its kNN is missing), with the random states the epoch started with."""
        if self.run is None:
            return
        checkpoint = self.checkpoint(epoch - 1, None, totals, self.epoch_rng)
        rundir.save_checkpoint(self.run.path("stage1_last.pth"), checkpoint)

    def knn_summary(self):
        if self.last_knn_top1 is None:
            return ""
        return f" (kNN top-1 {self.last_knn_top1:.2f}% when last measured)"

    def stop(self, signal_received, epoch, totals):
        """Save where a stop signal left the run, and raise Stopped with how to continue it."""
        if totals.steps < self.steps_per_epoch:
            self.save_unfinished_epoch(epoch, totals)
        if self.run is None:  # rank 0 says where it saved
            raise errors.Stopped("", signal_received.value)
        under_torchrun = (
            " (or the torchrun command with these flags, any number of processes)"
            if distributed.world_size() > 1
            else ""
        )
        raise errors.Stopped(
            f"stopped by {signal_received.name} in epoch {epoch} after step {totals.steps}; saved "
            f"{self.run.path('stage1_last.pth')}. Continue with: "
            f"python trainstage1.py --resume --run-dir {self.run.dir}{under_torchrun}",
            signal_received.value,
        )


def open_run(cfg, data, checkpoint, encoding):
    """The run folder: reopened for --resume, else created with config.json and augmentations.png.
    Under torchrun, rank 0's alone (None on the other ranks)."""
    if not distributed.is_main():
        return None
    if cfg.resume:
        return rundir.reopen_run(cfg.run_dir, LOG_NAME, checkpoint["epoch"] if checkpoint else 0)
    derived = {
        "peak_lr": optimizers.peak_lr(cfg),
        "warmup_epochs": optimizers.warmup_epochs(cfg),
        "knn_queries": data.knn_queries,
        "unlabelled_images": data.unlabelled_images,
        "steps_per_epoch": len(data.views_loader),
        "classes": len(data.class_names),
        **encoding.in_effect,  # --precision bf16 runs in fp32 on a CPU without native bf16
    }
    run = rundir.start_run(cfg, derived)
    save_augmentation_preview(data.views_loader, data.mean, data.std, run.path("augmentations.png"))
    return run


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
        cfg, checkpoint = resume.continue_run(cfg) if cfg.resume else (cfg, None)
        distributed.batch_share(cfg.batch_size)  # the run's batch, which --resume may have read
        cfg = config.with_dataset_defaults(cfg)
        if resume.finished(cfg, checkpoint):
            return
        if cfg.compile:
            runtime.check_compile(device)
        # the weights' initialisation (DistributedDataParallel gives every rank rank 0's); the
        # order and the augmentation come from the loaders' own generators, alike on every rank
        runtime.seed_everything(cfg.seed)
        data = loaddataset.pretraining_data(cfg, device)
        encoding = evaluate.Encoding.of_settings(cfg, device)
        run = open_run(cfg, data, checkpoint, encoding)
    pretraining = Pretraining(cfg, encoding, data, checkpoint, run)
    pretraining.start()
    with runtime.StopSignal() as own_stop:
        stop = (
            own_stop if distributed.world_size() == 1 else distributed.AgreedStop(own_stop, device)
        )
        for epoch in range(pretraining.epochs_done + 1, cfg.epochs + 1):
            totals, lr = pretraining.train_epoch(epoch, stop)
            if totals.steps == pretraining.steps_per_epoch:
                pretraining.finish_epoch(epoch, totals, lr, stop)
            if stop.received:
                pretraining.stop(stop.received, epoch, totals)
    pretraining.progress.close()
    if pretraining.run is not None:
        print(
            f"done: {pretraining.run.path('stage1_last.pth')}{pretraining.knn_summary()}; next: "
            f"python trainstage2.py --run-dir {pretraining.run.dir}"
        )


if __name__ == "__main__":
    main()
