"""Stage two: evaluation with labels. By default (--mode linear) a linear classifier trains on the
frozen stage-one encoder; --mode finetune trains the encoder with it, --mode scratch the same
network from random weights (the supervised baseline); --labels-per-class N or --label-fraction F
keep a seeded, class-balanced few of the labels, the same for every mode at the same --seed.
SimCLRv2's ways: --from-head-layer K keeps the first K projection-head layers under the classifier,
and --mode distill --teacher EVALUATION trains a student on every image stage one saw to predict
what that fine-tuned evaluation predicts.

Reads the stage-one checkpoint (the final epoch's, as the paper evaluates) of the newest run (or
--run-dir, or --checkpoint) and the dataset stage one used. The linear evaluation on all labels
writes into the run folder, every other one into its own folder, RUN/evaluations/MODE-LABELS/
(or --evaluation NAME): stage2_log.csv (one row per epoch, measured on the TEST split), stage2.pth
(everything test.py needs), stage2_predictions.csv, results.json (with what made it, its
provenance: an evaluation made otherwise is never replaced without --replace) and, with few labels,
labelled_images.csv. One stage two runs on a run folder at a time. It does not resume: Ctrl-C or
SIGTERM stops it after the current step, leaving the evaluation before whole, and running it
again starts it over.

A CPU-sized run:
    python trainstage2.py --epochs 2 --batch-size 256 --workers 2
"""

import dataclasses
import time

import torch

import config
import loaddataset
import net
from simclr import checkpoints, datasets, distillation, distributed, errors, optimizers
from simclr import locks, protocols, rundir, runtime
from simclr import stage2_bookkeeping


def stage_one(cfg, mode):
    """-> (the run, what stage two builds on): the stage-one checkpoint (or --checkpoint, of the
    run it belongs to) with its path and weights' digest; for a mode that starts from random
    weights, the run's settings alone and the normalisation that stage one measured the same
    way."""
    if mode.pretrained:
        run_dir, path = checkpoints.locate(1, cfg.run_dir, cfg.checkpoint)
        return rundir.Run(run_dir), checkpoints.read_stage_one(path, run_dir)
    run = rundir.Run(rundir.resolve_run_dir(cfg.run_dir))
    settings = rundir.run_settings(run.dir)
    source = datasets.DataSource.of_run(settings, cfg.dataset, cfg.data_dir, cfg.subset)
    mean, std = source.normalisation(settings["image_size"])
    return run, checkpoints.of_settings(settings, net.FEATURE_DIMS[settings["arch"]], mean, std)


def network_of(stage1, cfg):
    """What the classifier is built on: stage one's network, or a distillation student of
    --student-arch (stage one's stem, image size and normalisation, its own arch and width)."""
    if not cfg.student_arch:
        return stage1
    width = net.FEATURE_DIMS[cfg.student_arch]
    return dataclasses.replace(stage1, arch=cfg.student_arch, feature_dim=width)


def build_model(network, num_classes, cfg, mode):
    """A fresh linear classifier on the network's encoder (network_of) and cfg.from_head_layer
    head layers: stage one's weights, loaded strictly (frozen, its features normalised, for a
    linear probe), or random ones (scratch; a distillation student of --student-arch)."""
    pretrained = mode.pretrained and not cfg.student_arch
    norm = mode.frozen and cfg.feature_norm
    model = net.classifier_on_stage_one(
        network, num_classes, cfg.from_head_layer, pretrained, mode.frozen, norm
    )
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def build_teacher(teacher, encoding):
    """A distillation's teacher and its network, built here, frozen (eval mode) ->
    distillation.BuiltTeacher; None for any other mode."""
    if teacher is None:
        return None
    network = net.from_stage_two(teacher.checkpoint, teacher.path).to(encoding.device)
    if encoding.channels_last:
        network = network.to(memory_format=torch.channels_last)
    return distillation.BuiltTeacher(teacher, network.eval())


class ClassifierTraining:
    """SGD (Nesterov) with a per-step cosine lr over the plan's epochs, the test split measured
    after its test epochs. The step is the same for both protocols: they differ only in their
    batches, in how they compute the logits and in what trains (protocol.trained)."""

    def __init__(self, protocol, plan):
        cfg, self.test_epochs = plan.settings, plan.test_epochs
        self.protocol, self.epochs = protocol, cfg.epochs
        self.optimizer = torch.optim.SGD(
            [p for p in protocol.trained.parameters() if p.requires_grad],
            lr=plan.peak_lr,
            momentum=cfg.momentum,
            nesterov=True,
            weight_decay=cfg.weight_decay,
        )
        self.lr_at = optimizers.schedule(plan.peak_lr, cfg.epochs, protocol.steps_per_epoch)
        total_steps = cfg.epochs * protocol.steps_per_epoch
        self.progress = runtime.progress(total=total_steps, desc="stage 2", unit="step")

    def train_epoch(self, epoch, stop):
        """One epoch, or until a stop signal arrives -> EpochResult."""
        self.progress.set_description(f"stage 2, epoch {epoch}/{self.epochs}")
        first_step = (epoch - 1) * self.protocol.steps_per_epoch
        loss_sum, correct, seen = 0.0, 0, 0
        for step, (inputs, labels) in enumerate(self.protocol.batches(epoch), start=first_step):
            optimizers.set_lr(self.optimizer, self.lr_at(step))
            loss, logits, targets = self.protocol.loss(inputs, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.item() * len(targets)
            correct += (logits.argmax(1) == targets).sum().item()
            seen += len(targets)
            lr = f"{self.optimizer.param_groups[0]['lr']:.3g}"
            self.progress.set_postfix(loss=f"{loss.item():.3f}", lr=lr, refresh=False)
            self.progress.update()
            if stop.received:
                break
        return protocols.EpochResult(loss_sum / seen, 100.0 * correct / seen)


def measured(split, result):
    """A log row's columns of one measured split (prefix: test or val)."""
    loss, top1, top5 = round(result.loss, 5), round(result.top1, 3), round(result.top5, 3)
    return {f"{split}_loss": loss, f"{split}_top1": top1, f"{split}_top5": top5}


def train_classifier(protocol, plan, files, validates):
    """Train for the plan's epochs, one stage2_log.csv row per epoch (files: the evaluation's). At
    the plan's test epochs the held-out training images are measured where there are some
    (validates), and the test split once, after the last epoch; else the test split at each of
    those epochs (columns empty where nothing was measured) -> (the test split's
    protocols.EvalResult after the last epoch, the held-out images' then or None)."""
    training, epochs = ClassifierTraining(protocol, plan), plan.settings.epochs
    splits = ("val", "test") if validates else ("test",)
    with runtime.StopSignal() as stop:
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            train = training.train_epoch(epoch, stop)
            if stop.received:
                training.progress.close()  # before the message, so the bar is not drawn after it
                raise files.stopped(stop.received, epoch)
            row = {"train_loss": round(train.loss, 5), "train_top1": round(train.top1, 3)}
            row |= {f"{split}_{name}": "" for split in splits for name in ("loss", "top1", "top5")}
            validation = test = None
            if epoch in training.test_epochs and validates:
                validation = protocol.evaluate("validation")
                row |= measured("val", validation)
            if epoch == epochs or (epoch in training.test_epochs and not validates):
                test = protocol.evaluate("test")
                row |= measured("test", test)
            seconds = round(time.perf_counter() - started, 2)
            files.log(epoch, row | {"seconds": seconds})
    training.progress.close()
    return test, validation


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Evaluate, argv)
    distributed.refuse_several_processes("trainstage2.py")
    device = runtime.pick_device(cfg.device)
    runtime.seed_everything(cfg.seed)
    mode = config.STAGE_TWO_MODES[cfg.mode]
    run, stage1 = stage_one(cfg, mode)
    with locks.stage_two_lock(run.dir):  # one stage two per run folder at a time
        teacher = (
            distillation.read_teacher(run.dir, cfg.teacher, stage1) if mode.from_teacher else None
        )
        cfg = config.with_stage_two_defaults(cfg, stage1.settings, teacher and teacher.settings)
        data = loaddataset.stage_two_data(cfg, mode, stage1)
        plan = config.stage_two_plan(cfg, data, stage1.settings["epochs"])
        cfg = plan.settings
        encoding = runtime.Encoding.of_settings(cfg, device)
        setup = stage2_bookkeeping.Setup(run, plan, stage1, teacher, encoding)
        files = stage2_bookkeeping.EvaluationFiles.open(setup, data)
        network = network_of(stage1, cfg)
        model = build_model(network, len(data.class_names), cfg, mode).to(device)
        built_teacher = build_teacher(teacher, encoding)
        frozen = stage2_bookkeeping.Frozen(model, mode, built_teacher)
        files.announce(model, data)
        started = time.perf_counter()
        protocol = protocols.for_mode(mode, model, data, encoding, cfg, built_teacher)
        validates = data.validation_loader is not None
        test, validation = train_classifier(protocol, plan, files, validates)
        frozen.check()
        files.save(
            model, network, data, protocol, (test, validation), time.perf_counter() - started
        )
        files.done(test, validation)


if __name__ == "__main__":
    main()
