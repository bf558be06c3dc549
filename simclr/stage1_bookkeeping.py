"""Stage one's bookkeeping, handed what it needs by trainstage1.py, which keeps the method itself
(network, step, epoch loop): an epoch's running sums, how far a run got and its exact restore, a
batch that does not fit, and rank 0's files and lines (the run folder, augmentations.png, the log,
the checkpoint, the start, stop and done lines). Under torchrun the other ranks hold a RunFiles
too, one that writes and prints nothing.
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

from simclr import checkpoints, distributed, errors, optimizers, resume, rundir, runtime

PREVIEW_PAIRS = 8  # image pairs drawn into augmentations.png
PREVIEW_SIDE = 96  # pixels per image in augmentations.png; 32x32 views are too small to judge
PREVIEW_CAPTION_WIDTH = 80  # pixels left of the images for the row captions
CHANCE_MARGIN = 0.01  # warn when the first epoch's loss is within 1% of ln(2N-1)


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


@dataclasses.dataclass
class Progress:
    """How far a run got: whole epochs, the steps and sums of the next one, the last kNN top-1,
    and the random states the epoch in progress started with."""

    epochs_done: int = 0
    next_totals: EpochTotals = dataclasses.field(default_factory=EpochTotals)
    last_knn_top1: typing.Optional[float] = None
    epoch_rng: typing.Optional[dict] = None

    def steps_done(self, steps_per_epoch):
        return self.epochs_done * steps_per_epoch + self.next_totals.steps


def restore(checkpoint, training, views_loader):
    """Load a stage-one checkpoint into training (weights, optimizer, scaler) and the loader's
    random states -> its Progress; a new run (checkpoint None) -> a fresh Progress."""
    if checkpoint is None:
        return Progress()
    name = checkpoints.STAGE_ONE_FILE
    checkpoints.load_strictly(training.model, checkpoint["model"], name)
    training.optimizer.load_state_dict(checkpoint["optimizer"])
    training.scaler.load_state_dict(checkpoint["scaler"])
    resume.set_rng_state(checkpoint["rng"], views_loader)
    totals = EpochTotals(**checkpoint["next_epoch_totals"])
    return Progress(checkpoint["epoch"], totals, checkpoint.get("last_knn_top1"))


def fits(train_step, training, x1, x2):
    """Whether a trial step (train_step) on these views fits in memory."""
    training.optimizer.zero_grad(set_to_none=True)
    if training.encoding.device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        train_step(training, x1, x2)
        return True
    except torch.OutOfMemoryError:
        return False


def fail_out_of_memory(train_step, training, x1, x2):
    """Stop with what fits: the same batch with --activation-checkpointing (the recipe kept), else
    the largest halved batch whose step (train_step) fits. The weights these trial steps change
    are never saved: the run stops here."""
    cfg, batch_size, device = training.cfg, len(x1), training.encoding.device
    if distributed.world_size() > 1:  # a trial step is a collective: the ranks cannot try apart
        raise errors.InputError(
            f"out of {device.type} memory at --batch-size {cfg.batch_size} with {cfg.arch} "
            f"({batch_size} per process); try --batch-size {cfg.batch_size // 2}"
            + ("" if cfg.activation_checkpointing else " or --activation-checkpointing")
        )
    recomputable = not (cfg.activation_checkpointing or cfg.compile)
    if recomputable:
        training.model.recompute_activations = True
        if fits(train_step, training, x1, x2):
            raise errors.InputError(
                f"out of {device.type} memory at --batch-size {cfg.batch_size} with {cfg.arch}; "
                f"it fits with --activation-checkpointing (the same run, about a third more "
                f"compute): rerun with it"
            )
        training.model.recompute_activations = False
    fits_at = None
    while fits_at is None and batch_size > 2:
        batch_size //= 2
        if fits(train_step, training, x1[:batch_size], x2[:batch_size]):
            fits_at = batch_size
    rescaled = f" (--lr-scaling {cfg.lr_scaling} adapts the lr)" if cfg.lr_scaling != "none" else ""
    suggestion = (
        f"--batch-size {fits_at} fits: rerun with it{rescaled}"
        if fits_at
        else "even --batch-size 2 does not fit: try a smaller --arch"
    )
    raise errors.InputError(
        f"out of {device.type} memory at --batch-size {cfg.batch_size} with "
        f"{cfg.arch}; {suggestion}"
    )


def nonfinite_loss(mean_loss, epoch, step_in_epoch):
    """The error that ends a run whose running loss is no longer finite."""
    return errors.InputError(
        f"the loss became {mean_loss} in epoch {epoch} by step {step_in_epoch}; "
        f"usual causes: lr too high (try a smaller --lr), fp16 overflow (try "
        f"--precision bf16 or fp32); {checkpoints.STAGE_ONE_FILE} is untouched",
        on_every_rank=True,  # the loss of the global batch
    )


def chance_warning(loss, batch_size):
    """-> a warning line when the first epoch's loss is still at ln(2N-1), else None."""
    chance = math.log(2 * batch_size - 1)
    if abs(loss - chance) <= CHANCE_MARGIN * chance:
        return (
            f"warning: after epoch 1 the loss {loss:.3f} is still at chance level ln(2N-1) = "
            f"{chance:.3f}: nothing is being learned yet (check the lr and the data)"
        )
    return None


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


def derived_settings(plan, data, encoding):
    """What the plan and the data come to that the run uses, as config.json records them."""
    return {
        "peak_lr": plan.peak_lr,
        "warmup_epochs": plan.warmup_epochs,
        "knn_queries": plan.knn_queries,
        "data_path": plan.data_path,  # --data-path auto's choice
        "unlabelled_images": data.unlabelled_images,
        "steps_per_epoch": len(data.views_loader),
        "classes": len(data.class_names),
        "device": encoding.device.type,
        **encoding.in_effect,  # --precision bf16 runs in fp32 on a CPU without native bf16
    }


class RunFiles:
    """Rank 0's run folder and lines: a new run's config.json and augmentations.png, the reopened
    folder of a resumed one, the log rows, the checkpoint, the start, stop and done lines. On the
    other ranks under torchrun (run None) it writes and prints nothing."""

    def __init__(self, run, plan, data, run_id=""):
        self.run, self.plan, self.cfg, self.data = run, plan, plan.settings, data
        self.run_id = run_id

    @classmethod
    def open(cls, plan, data, checkpoint, encoding):
        """The run folder of plan (a config.StageOnePlan) on data, in encoding: a new one with
        config.json, or the folder of a resumed run, whose data must be the data it trained on
        (resume.check_same_data)."""
        cfg = plan.settings
        if not distributed.is_main():
            return cls(None, plan, data)
        if cfg.resume:
            epochs_done = checkpoint["epoch"] if checkpoint else 0
            resume.check_same_data(cfg, checkpoint, data)
            record = resume.data_moved(cfg)
            run = rundir.reopen_run(cfg.run_dir, rundir.STAGE_ONE_LOG, epochs_done)
            return cls(run, plan, data, record.run_id)
        run, record = rundir.start_run(cfg, derived_settings(plan, data, encoding))
        save_augmentation_preview(
            data.views_loader, data.mean, data.std, run.path("augmentations.png")
        )
        return cls(run, plan, data, record.run_id)

    @property
    def checkpoint_path(self):
        return self.run.path(checkpoints.STAGE_ONE_FILE)

    def announce(self, encoding, progress, resumed):
        """Say in one line what runs where, with the lr schedule in effect."""
        if self.run is None:
            return
        cfg, steps_per_epoch = self.cfg, len(self.data.views_loader)
        warmup = self.plan.warmup_epochs
        resuming = (
            f" | resuming in epoch {progress.epochs_done + 1} after step "
            f"{progress.next_totals.steps} of {steps_per_epoch}"
            if resumed
            else ""
        )
        world = distributed.world_size()
        processes = f" x {world} processes (global batch {cfg.batch_size})" if world > 1 else ""
        unlabelled = self.data.unlabelled_images
        unlabelled = f" (with {unlabelled:,} unlabelled images)" if unlabelled else ""
        warmup_steps = runtime.counted(optimizers.warmup_steps(warmup, steps_per_epoch), "step")
        in_effect = "{precision}, {memory_format}".format(**encoding.in_effect)
        in_effect += ", activation checkpointing" if cfg.activation_checkpointing else ""
        print(
            f"run folder {self.run.dir} | {cfg.arch} on {encoding.device} in {in_effect}"
            f"{processes}, "
            f"data path: {self.data.path} | {steps_per_epoch} steps/epoch{unlabelled} | "
            f"{cfg.optimizer}, lr {self.plan.peak_lr:.4g} after {warmup:g} warm-up epochs "
            f"({warmup_steps}), then cosine to 0{resuming}"
        )
        if warmup >= cfg.epochs:
            print(
                f"note: --warmup-epochs {warmup:g} is not less than --epochs {cfg.epochs}: the lr "
                f"never reaches its peak nor decays; leave --warmup-epochs out for a fitting one"
            )

    def log(self, epoch, totals, lr, peak_memory, knn_top1, progress_bar):
        """The epoch's log row; after the first epoch, the chance-level warning if it is due,
        through the bar, so it neither breaks the bar's line nor echoes source."""
        if self.run is None:
            return
        self.run.log(
            rundir.STAGE_ONE_LOG,
            epoch=epoch,
            **totals.stats(lr, peak_memory),
            knn_top1="" if knn_top1 is None else round(knn_top1, 2),
        )
        warning = epoch == 1 and chance_warning(
            totals.loss_sum / totals.anchors, self.cfg.batch_size
        )
        if warning:
            progress_bar.write(warning)

    def save(self, training, epoch, knn_top1, progress, next_totals, rng):
        """The stage-one checkpoint after epoch whole epochs and next_totals' steps of the next,
        whose random states rng holds. No "best" checkpoint is kept: the kNN monitor measures on
        the test split, and a checkpoint chosen there would bias the test accuracy stage two
        reports; like the paper, stage two evaluates the final one."""
        if self.run is None:
            return
        checkpoint = checkpoints.stage_one(
            dataclasses.asdict(self.cfg),
            training.model,
            training.optimizer,
            training.scaler,
            self.data,
            {
                "run_id": self.run_id,
                "epoch": epoch,
                "knn_top1": knn_top1,
                "last_knn_top1": progress.last_knn_top1,
                "next_epoch_totals": dataclasses.asdict(next_totals),
                "rng": rng,
            },
        )
        checkpoints.save(self.checkpoint_path, checkpoint)

    def save_epoch(self, training, epoch, knn_top1, progress):
        """After a whole epoch: the random states the next one starts with."""
        if self.run is not None:
            rng = resume.rng_state(self.data.views_loader)
            self.save(training, epoch, knn_top1, progress, EpochTotals(), rng)

    def save_unfinished_epoch(self, training, epoch, totals, progress):
        """The last whole epoch plus this epoch's steps so far (all of them when only its kNN is
        missing), with the random states the epoch started with."""
        self.save(training, epoch - 1, None, progress, totals, progress.epoch_rng)

    def stopped(self, signal_received, epoch, totals):
        """-> Stopped, with how to continue the run (rank 0 says where it saved)."""
        if self.run is None:
            return errors.Stopped("", signal_received.value)
        under_torchrun = (
            " (or the torchrun command with these flags, any number of processes)"
            if distributed.world_size() > 1
            else ""
        )
        return errors.Stopped(
            f"stopped by {signal_received.name} in epoch {epoch} after step {totals.steps}; saved "
            f"{self.checkpoint_path}. Continue with: "
            f"python trainstage1.py --resume --run-dir {self.run.dir}{under_torchrun}",
            signal_received.value,
        )

    def done(self, progress):
        if self.run is None:
            return
        knn = progress.last_knn_top1
        knn = "" if knn is None else f" (kNN top-1 {knn:.2f}% when last measured)"
        pointed = f"--run-dir {self.run.dir}"
        following = f"python trainstage2.py {pointed}"
        if self.data.test_loader is None:  # images without labels: nothing to score them on
            following = (
                f"python pictures.py {pointed}, python export.py {pointed}, or stage two on a "
                f"folder with labels: python trainstage2.py {pointed} --data-dir DIR"
            )
        print(f"done: {self.checkpoint_path}{knn}; next: {following}")
