"""Stage two: evaluation with labels. By default (--mode linear) a linear classifier trains on the
frozen stage-one encoder; --mode finetune trains the encoder with it, --mode scratch the same
network from random weights (the supervised baseline); --labels-per-class N or --label-fraction F
keep a seeded, class-balanced few of the labels, the same for every mode at the same --seed.
SimCLRv2's ways: --from-head-layer K keeps the first K projection-head layers under the classifier,
and --mode distill --teacher EVALUATION trains a student on every image stage one saw to predict
what that fine-tuned evaluation predicts.

Reads the stage-one checkpoint (the final epoch's, as the paper evaluates) of the newest run (or
--run-dir, or --checkpoint) and the dataset stage one used. The linear evaluation on all labels writes into
the run folder, every other one into its own folder, RUN/evaluations/MODE-LABELS/: stage2_log.csv
(one row per epoch, measured on the TEST split), stage2.pth (everything test.py needs),
stage2_predictions.csv, results.json and, with few labels, labelled_images.csv. It does not
resume: Ctrl-C or SIGTERM stops it after the current step, and running it again starts it over.

A CPU-sized run:
    python trainstage2.py --epochs 2 --batch-size 256 --workers 2
"""

import dataclasses
import itertools
import os
import time
import typing

import torch
import torch.nn.functional as F
import config
from simclr import distributed
from simclr import errors
from simclr import evaluate
import loaddataset
import net
from simclr import optimizers
from simclr import checkpoints, rundir
from simclr import runtime
from simclr import datasets
from simclr import distillation

LOG_NAME = "stage2_log.csv"
MODE_DETAILS = {
    "linear": "linear classifier on the frozen encoder (eval mode)",
    "finetune": "the pretrained encoder and a new linear classifier trained together, BatchNorm "
    "in training mode",
    "scratch": "the same network from random weights, trained on the same labels with a recipe "
    "of its own (lr_per_256, weight_decay): the supervised baseline",
    "distill": "a student trained on every image stage one saw to match the teacher's softened "
    "predictions on the same crop + flip view (SimCLRv2), BatchNorm in training mode",
}


class EvalResult(typing.NamedTuple):
    """The classifier on the whole test split."""

    loss: float
    top1: float  # percent
    top5: float  # percent
    predictions: torch.Tensor  # (M,) class indices, on the CPU
    labels: torch.Tensor  # (M,)

    @classmethod
    def from_logits(cls, logits, labels):
        top1, top5 = evaluate.topk_correct(logits, labels, (1, 5))
        return cls(
            loss=F.cross_entropy(logits, labels).item(),
            top1=100.0 * top1 / len(labels),
            top5=100.0 * top5 / len(labels),
            predictions=logits.argmax(1).cpu(),
            labels=labels.cpu(),
        )


class EpochResult(typing.NamedTuple):
    """The classifier's loss and top-1 (%) on one epoch's training batches, as they were trained."""

    loss: float
    top1: float


def network_of(stage1, cfg):
    """What the classifier is built on: stage one's network, or a distillation student of
    --student-arch (stage one's stem, image size and normalisation, its own arch and width)."""
    if not cfg.student_arch:
        return stage1
    return {**stage1, "arch": cfg.student_arch, "feature_dim": net.FEATURE_DIMS[cfg.student_arch]}


def build_model(network, num_classes, cfg):
    """A fresh linear classifier on the network's encoder (network_of) and cfg.from_head_layer
    head layers, loaded strictly (frozen for linear), or randomly initialised (scratch; a
    distillation student of --student-arch)."""
    pretrained = cfg.mode != "scratch" and not cfg.student_arch
    frozen = cfg.mode == "linear"
    model = net.classifier_on_stage_one(
        network,
        num_classes,
        cfg.from_head_layer,
        pretrained,
        frozen,
        frozen and cfg.centre_features,
    )
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


class SupervisedLoss:
    """The cross-entropy of the classifier's logits against the batch's labels."""

    def loss(self, inputs, labels):
        """-> (the loss, the logits, what top-1 counts them against)."""
        logits = self.logits(inputs)
        return F.cross_entropy(logits, labels), logits, labels


class PerStepProtocol(SupervisedLoss):
    """The paper's protocol: the encoder runs on crop + flip images at every step (frozen for a
    linear evaluation; trained with the classifier, BatchNorm in training mode, for finetune and
    scratch)."""

    name = "per-step"
    description = "encoder pass every step on crop + flip images"

    def __init__(self, model, data, encoding, cfg):
        self.model, self.data, self.encoding = model, data, encoding
        self.steps_per_epoch = len(data.train_loader)
        self.trained = model  # what the optimizer updates: every parameter that requires grad

    def batches(self, epoch):
        """(images, labels) on the device, the model in train mode (a frozen encoder stays in
        eval mode: LinearClassifier sees to it)."""
        self.model.train()
        for images, labels in self.data.train_loader:
            yield self.encoding.inputs(images), labels.to(self.encoding.device)

    def logits(self, images):
        with self.encoding.autocast():
            return self.model(images)

    @torch.no_grad()
    def evaluate(self):
        self.model.eval()
        logits, labels = [], []
        for images, batch_labels in runtime.progress(
            self.data.test_loader, desc="test split", unit="batch", leave=False
        ):
            logits.append(self.logits(self.encoding.inputs(images)))
            labels.append(batch_labels.to(self.encoding.device))
        return EvalResult.from_logits(torch.cat(logits), torch.cat(labels))


class CachedFeaturesProtocol(SupervisedLoss):
    """The frozen encoder encodes the training split once (or K crop + flip passes, one per epoch
    in turn) and the test split once; the classifier then trains on the stored features.

    Exact for a frozen encoder in eval mode, whose features do not depend on the batch: only the
    per-step protocol's fresh augmentation every epoch is traded for speed.
    """

    name = "cached"

    def __init__(self, model, data, encoding, cfg):
        self.classifier, self.batch_size = model.probe(), cfg.batch_size
        self.trained = self.classifier
        passes = max(1, cfg.augmented_passes)
        train_loader = data.train_loader if cfg.augmented_passes else data.plain_train_loader
        representation = model.representation()
        self.train_passes = [
            evaluate.extract_features(
                representation,
                train_loader,
                encoding,
                f"encoding training split, pass {n}/{passes}",
            )
            for n in range(1, passes + 1)
        ]
        self.test_features, self.test_labels = evaluate.extract_features(
            representation, data.test_loader, encoding, "encoding test split"
        )
        self.steps_per_epoch = -(-len(self.train_passes[0][0]) // cfg.batch_size)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        kind = (
            f"{cfg.augmented_passes} crop + flip passes"
            if cfg.augmented_passes
            else "one plain pass"
        )
        self.description = f"features cached once ({kind} over the training split)"

    def batches(self, epoch):
        """(features, labels) of this epoch's pass, seeded order; the classifier in train mode."""
        features, labels = self.train_passes[(epoch - 1) % len(self.train_passes)]
        order = torch.randperm(len(labels), generator=self.generator).to(labels.device)
        self.classifier.train()
        for batch in order.split(self.batch_size):
            yield features[batch], labels[batch]

    def logits(self, features):
        return self.classifier(features)

    @torch.no_grad()
    def evaluate(self):
        self.classifier.eval()
        return EvalResult.from_logits(self.classifier(self.test_features), self.test_labels)


class DistillationProtocol(PerStepProtocol):
    """SimCLRv2's distillation: the student (model) sees every image stage one saw, crop + flip,
    and learns the frozen teacher's softened predictions of the same view, computed on the fly
    (one teacher forward pass per step, in eval mode); with --label-weight, also the cross-entropy
    on a batch of the teacher's labelled images each step. The images' own labels are never read.
    It is measured on the test split as fine-tuning is."""

    name = "distill"

    def __init__(self, model, data, encoding, cfg, teacher, images):
        """teacher: the Teacher, its network built here (frozen, eval mode); images: the loader
        of every image stage one saw."""
        super().__init__(model, data, encoding, cfg)
        self.taught_by, self.images = teacher, images
        self.teacher = net.from_stage_two(teacher.checkpoint, teacher.path).to(encoding.device)
        if cfg.channels_last:
            self.teacher = self.teacher.to(memory_format=torch.channels_last)
        self.teacher.eval()
        self.teacher_before = snapshot(self.teacher)
        self.temperature, self.label_weight = cfg.distill_temperature, cfg.label_weight
        self.steps_per_epoch = len(images)
        self.images_seen = 0
        self.description = (
            f"teacher's predictions on the fly, tau {cfg.distill_temperature:g}, label weight "
            f"{cfg.label_weight:g}, {len(images.dataset):,} images"
        )

    def batches(self, epoch):
        """(images, a labelled batch or None) on the device; the student in train mode."""
        self.model.train()
        labelled = self.labelled_batches() if self.label_weight else itertools.repeat(None)
        for (images, _), labelled_batch in zip(self.images, labelled):  # labels never read
            self.images_seen += len(images)
            yield self.encoding.inputs(images), labelled_batch

    def labelled_batches(self):
        """The teacher's labelled images, crop + flip, one batch per step for ever."""
        while True:
            for images, labels in self.data.train_loader:
                yield self.encoding.inputs(images), labels.to(self.encoding.device)

    def loss(self, images, labelled_batch):
        """-> (the distillation loss, plus label_weight x the labelled cross-entropy; the student's
        logits; the teacher's top class, what train top-1 counts agreement with)."""
        with torch.no_grad(), self.encoding.autocast():
            teacher_logits = self.teacher(images)
        logits = self.logits(images)
        loss = distillation.distillation_loss(logits, teacher_logits, self.temperature)
        if labelled_batch is not None:
            labelled_images, labels = labelled_batch
            loss = loss + self.label_weight * F.cross_entropy(self.logits(labelled_images), labels)
        return loss, logits, teacher_logits.argmax(1)


PROTOCOLS = {
    protocol.name: protocol
    for protocol in (PerStepProtocol, CachedFeaturesProtocol, DistillationProtocol)
}


class ClassifierTraining:
    """SGD (Nesterov) with a per-step cosine lr over cfg.epochs. The step is the same for both
    protocols: they differ only in their batches, in how they compute the logits and in what
    trains (protocol.trained)."""

    def __init__(self, protocol, cfg):
        self.protocol, self.epochs = protocol, cfg.epochs
        peak_lr = optimizers.linearly_scaled(cfg.lr, cfg.batch_size)
        self.optimizer = torch.optim.SGD(
            [p for p in protocol.trained.parameters() if p.requires_grad],
            lr=peak_lr,
            momentum=cfg.momentum,
            nesterov=True,
            weight_decay=cfg.weight_decay,
        )
        self.lr_at = optimizers.schedule(peak_lr, cfg.epochs, protocol.steps_per_epoch)
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
            self.progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            self.progress.update()
            if stop.received:
                break
        return EpochResult(loss_sum / seen, 100.0 * correct / seen)


def test_due(epoch, cfg):
    """Whether the test split is measured after this epoch: every epoch of a linear evaluation
    (cached features make it cheap), else every 1/cfg.test_evaluations of the run (whole
    epochs) and after the last: fine-tuning on a few labels runs many one-step epochs."""
    spacing = max(1, cfg.epochs // cfg.test_evaluations)
    return cfg.mode == "linear" or epoch == cfg.epochs or epoch % spacing == 0


def train_classifier(protocol, evaluation, stage_one_dir, cfg):
    """Train for cfg.epochs, one stage2_log.csv row per epoch in the evaluation's folder (test
    columns empty where the test split was not measured) -> the last epoch's EvalResult."""
    training, train_losses = ClassifierTraining(protocol, cfg), []
    with runtime.StopSignal() as stop:
        for epoch in range(1, cfg.epochs + 1):
            started = time.perf_counter()
            train = training.train_epoch(epoch, stop)
            train_losses.append(train.loss)
            if stop.received:
                training.progress.close()  # before the message, so the bar is not drawn after it
                evaluation.abandon()
                raise stopped_stage_two(stop.received, epoch, stage_one_dir)
            row = {"train_loss": round(train.loss, 5), "train_top1": round(train.top1, 3)}
            row |= {"test_loss": "", "test_top1": "", "test_top5": ""}
            if test_due(epoch, cfg):
                test = protocol.evaluate()
                row |= {"test_loss": round(test.loss, 5), "test_top1": round(test.top1, 3)}
                row |= {"test_top5": round(test.top5, 3)}
                training.progress.write(
                    f"epoch {epoch}: test top-1 {test.top1:.2f}%, top-5 {test.top5:.2f}%"
                )
            seconds = round(time.perf_counter() - started, 2)
            evaluation.log(LOG_NAME, epoch=epoch, **row, seconds=seconds)
    training.progress.close()
    if train_losses[-1] > train_losses[0]:
        print(climbing_loss(train_losses, cfg))
    return test


def climbing_loss(train_losses, cfg):
    """The warning for a training loss that ended above its first epoch's: it diverged, or
    climbed for most of the run, and the test figures are not what the features are worth."""
    return (
        f"warning: the training loss ended at {train_losses[-1]:.3f}, above its first epoch's "
        f"{train_losses[0]:.3f}: the lr ({cfg.lr:g} per 256 images) is too high for these "
        f"features; try --lr {cfg.lr / 10:g}"
    )


def stopped_stage_two(signal_received, epoch, stage_one_dir):
    """Stage two keeps no checkpoint to resume from: say how to start it over."""
    return errors.Stopped(
        f"stopped by {signal_received.name} in stage two, epoch {epoch}; stage two does not "
        f"resume: run the same trainstage2.py command again to start it over (stage one's files "
        f"in {stage_one_dir}, and any evaluation there before, are untouched)",
        signal_received.value,
    )


def snapshot(module):
    return {name: tensor.detach().cpu().clone() for name, tensor in module.state_dict().items()}


def check_unchanged(module, before, what):
    """Every tensor of a frozen module, BatchNorm running statistics included, must equal what it
    was before stage two trained (what: the module in words, for the error)."""
    changed = [
        name
        for name, tensor in module.state_dict().items()
        if not torch.equal(tensor.cpu(), before[name])
    ]
    if changed:
        raise RuntimeError(f"the {what} changed during stage two: {changed[:5]}")


def save_outputs(run, checkpoint, test, test_image_names, summary):
    """stage2.pth, stage2_predictions.csv (one row per test image) and results.json."""
    names = checkpoint["class_names"]
    checkpoints.save(run.path(checkpoints.STAGE_TWO_FILE), checkpoint)
    labels, predictions = test.labels, test.predictions
    rundir.write_csv(
        run.path("stage2_predictions.csv"),
        [
            {
                "index": index,
                "image": image,
                "label": label,
                "prediction": prediction,
                "label_name": names[label],
                "prediction_name": names[prediction],
            }
            for index, (image, label, prediction) in enumerate(
                zip(test_image_names, labels.tolist(), predictions.tolist())
            )
        ],
    )
    per_class = {
        name: round(100.0 * (predictions[labels == label] == label).float().mean().item(), 2)
        for label, name in enumerate(names)
        if (labels == label).any()
    }
    rundir.write_json(
        run.path("results.json"), {**summary, "class_names": names, "per_class_accuracy": per_class}
    )


def check_label_flags(cfg):
    if cfg.labels_per_class and cfg.label_fraction:
        raise errors.InputError("pass --labels-per-class or --label-fraction, not both")
    if cfg.label_fraction is not None and cfg.label_fraction > 1:
        raise errors.InputError(
            f"--label-fraction {cfg.label_fraction:g} is above 1: pass a fraction in (0, 1], or "
            f"leave it out for all labels"
        )


def stage_one(cfg):
    """-> (the run, what stage two builds on): the stage-one checkpoint (or --checkpoint) with its
    path; for scratch, the run's settings alone, since its weights are not used, and the
    normalisation that stage one measured the same way."""
    if cfg.mode != "scratch":
        run_dir, path = checkpoints.locate(1, cfg.run_dir, cfg.checkpoint)
        return rundir.Run(run_dir), {**checkpoints.load(path, stage=1), "path": path}
    run = rundir.Run(rundir.resolve_run_dir(cfg.run_dir))
    settings = rundir.run_settings(run.dir)
    source = datasets.DataSource.of_run(settings, cfg.dataset, cfg.data_dir, cfg.subset)
    mean, std = source.normalisation(settings["image_size"])
    return run, checkpoints.of_settings(settings, net.FEATURE_DIMS[settings["arch"]], mean, std)


class Teacher(typing.NamedTuple):
    """--mode distill's teacher: an evaluation of this run, read and checked."""

    name: str  # its evaluation folder's name
    dir: str
    checkpoint: dict  # its stage2.pth
    path: str
    top1: typing.Optional[float]  # its test top-1 (results.json), where it has one
    weights: str  # its weights' digest: a teacher replaced since is another teacher


def with_features(cfg, stage1):
    """--features z: the classifier on every projection-head layer, which gives z."""
    if cfg.features == "h":
        return cfg
    layers = checkpoints.head_layers(stage1["config"])
    if cfg.mode == "distill" or cfg.from_head_layer not in (None, layers):
        raise errors.InputError(
            f"--features z puts the classifier on all {layers} projection-head layers: leave out "
            f"--from-head-layer (distill: the student reads what its teacher reads)"
        )
    return dataclasses.replace(cfg, from_head_layer=layers)


def taught_by(cfg, run, stage1):
    """-> (cfg, the Teacher or None). distill: the student learns from the labels the teacher was
    given, from its data, and by default with its network (its head layers): cfg takes them where
    not given. Other modes: --from-head-layer 0 where not given, and no teacher."""
    if cfg.mode != "distill":
        if cfg.teacher or cfg.student_arch:
            raise errors.InputError(
                "--teacher and --student-arch are read by --mode distill only: add --mode distill"
            )
        return dataclasses.replace(cfg, from_head_layer=cfg.from_head_layer or 0), None
    checkpoint, path = distillation.teacher_checkpoint(run.dir, cfg.teacher, stage1)
    taught = checkpoint["config"]
    if (cfg.labels_per_class, cfg.label_fraction) not in [
        (None, None),
        (taught["labels_per_class"], taught["label_fraction"]),
    ]:
        raise errors.InputError(
            f"--teacher {cfg.teacher} is {rundir.evaluation_title(taught)}: the student uses the "
            f"teacher's labels, so leave out --labels-per-class and --label-fraction"
        )
    from_head_layer = cfg.from_head_layer
    if from_head_layer is None:
        from_head_layer = 0 if cfg.student_arch else checkpoint["from_head_layer"]
    if cfg.student_arch and from_head_layer:
        raise errors.InputError(
            "--student-arch trains a student from random weights, with no head layers of stage "
            "one to keep: leave out --from-head-layer"
        )
    cfg = dataclasses.replace(
        cfg,
        labels_per_class=taught["labels_per_class"],
        label_fraction=taught["label_fraction"],
        dataset=cfg.dataset or taught["dataset"],
        data_dir=cfg.data_dir or taught["data_dir"],
        subset=taught["subset"] if cfg.subset is None else cfg.subset,
        from_head_layer=from_head_layer,
    )
    folder = os.path.dirname(path)
    results = os.path.join(folder, "results.json")
    top1 = rundir.read_json(results).get("top1") if os.path.isfile(results) else None
    weights = checkpoints.weights_digest(checkpoint["model"])
    return cfg, Teacher(cfg.teacher, folder, checkpoint, path, top1, weights)


def labelled_data(cfg, stage1, teacher):
    """-> (cfg with the dataset, data folder and subset in use: stage one's unless given, the
    labelled data at stage one's image size and normalisation, and for a distillation every image
    stage one saw, crop + flip, or None), the labels checked against the teacher's."""
    source = datasets.DataSource.of_run(stage1["config"], cfg.dataset, cfg.data_dir, cfg.subset)
    cfg = dataclasses.replace(
        cfg, dataset=source.dataset, data_dir=source.data_dir, subset=source.subset
    )
    shape = stage1["image_size"], stage1["mean"], stage1["std"]
    data = loaddataset.linear_eval_data(cfg, source, *shape)
    if teacher is None:
        return cfg, data, None
    distillation.check_teacher_classes(teacher.checkpoint, teacher.name, data.class_names)
    distillation.check_same_labels(teacher.dir, data.labelled_images)
    return cfg, data, loaddataset.distillation_images(cfg, source, *shape)


# Settings that change where and how fast stage two runs, not the numbers it reports
WHERE_AND_HOW_FAST = ("run_dir", "checkpoint", "device", "workers", "channels_last")
WHERE_AND_HOW_FAST += ("evaluation", "replace")


def evaluation_settings(cfg, run, stage1, encoding, teacher):
    """Everything that makes this evaluation's numbers, as results.json records it: the settings
    in effect, the stage-one checkpoint (its place in the run and its epoch) and a distillation's
    teacher (its weights' digest). Two evaluations with the same settings are the same one."""
    settings = {
        key: value
        for key, value in dataclasses.asdict(cfg).items()
        if key not in WHERE_AND_HOW_FAST
    }
    settings["precision"] = encoding.in_effect["precision"]
    if stage1["path"]:  # inside the run folder: named from it, wherever the folder was given from
        path, run_dir = os.path.abspath(stage1["path"]), os.path.abspath(run.dir)
        where = os.path.relpath(path, run_dir) if path.startswith(run_dir + os.sep) else path
        settings |= {"stage1_checkpoint": where, "stage1_trained": checkpoints.trained_for(stage1)}
    if teacher:
        settings["teacher_weights"] = teacher.weights
    return settings


def differences(before, now):
    """The settings two evaluations differ in, in words: '--lr 0.05 (this one: 0.1)'."""
    changed = [key for key in dict.fromkeys([*before, *now]) if before.get(key) != now.get(key)]
    flags = {field.name for field in dataclasses.fields(config.LinearEval)}
    words = [
        f"{'--' + key.replace('_', '-') if key in flags else key} {before.get(key, 'unset')} "
        f"(this one: {now.get(key, 'unset')})"
        for key in changed[:3]
    ]
    return ", ".join(words) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")


def check_replaceable(folder, settings, cfg):
    """An evaluation is never replaced silently: one made with other settings in the folder this
    one writes to is refused, unless --replace says to replace it."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        return
    before = rundir.read_json(path)
    if before.get("settings") == settings:
        return
    made_with = (
        f"made with {differences(before['settings'], settings)}"
        if "settings" in before
        else "made before evaluations recorded their settings"
    )
    if cfg.replace:
        print(f"note: replacing {folder}'s evaluation, {made_with}")
        return
    raise errors.InputError(
        f"{folder} holds an evaluation {made_with}: pass --replace to replace it, or "
        f"--evaluation NAME to keep both"
    )


def open_evaluation(run, cfg, data, settings):
    """The folder this evaluation writes into (rundir.Evaluation, which moves its files into
    place when it finishes): --evaluation's, else the run folder for the linear one on all labels,
    where test.py and the plots look by default, and RUN/evaluations/MODE-LABELS/ for every
    other, with labelled_images.csv listing the labelled images when they are a few."""
    name = cfg.evaluation or rundir.evaluation_name(
        cfg.mode, cfg.labels_per_class, cfg.label_fraction, cfg.from_head_layer
    )
    folder = run.dir if name is None else os.path.join(run.dir, rundir.EVALUATIONS, name)
    check_replaceable(folder, settings, cfg)
    os.makedirs(folder, exist_ok=True)
    evaluation = rundir.Evaluation(folder)
    evaluation.open()
    if cfg.labels_per_class or cfg.label_fraction:
        rundir.write_csv(evaluation.path("labelled_images.csv"), data.labelled_images)
    return evaluation


def announce(cfg, stage1, model, data, encoding, distill):
    """The start line: what trains from what, where, in which precision, on how many images.
    distill: (the Teacher, the loader of every image stage one saw), or Nones."""
    start = (
        "from random weights"
        if cfg.mode == "scratch" or cfg.student_arch
        else f"from {stage1['path']} ({checkpoints.trained_for(stage1)}), "
        f"{'frozen' if cfg.mode == 'linear' else 'fine-tuned'}"
    )
    if cfg.from_head_layer:
        layers = runtime.counted(cfg.from_head_layer, "projection-head layer")
        start += f", {layers} under the classifier"
    teacher, images = distill
    if teacher:
        top1 = "" if teacher.top1 is None else f", test top-1 {teacher.top1:.2f}%"
        start += f", taught by {teacher.name}{top1}"
    trained_on = (
        f"{len(data.labelled_images):,} labelled training images of {data.training_images:,}"
        if teacher is None
        else f"{len(images.dataset):,} images that stage one saw, {len(data.labelled_images):,} "
        f"of them labelled for the teacher, read at label weight {cfg.label_weight:g}"
    )
    in_effect = "{precision}, {memory_format}".format(**encoding.in_effect)
    print(
        f"{cfg.mode}: {cfg.student_arch or stage1['arch']} {start} on {encoding.device} in "
        f"{in_effect}; trainable parameters: {trainable_parameters(model):,}; {trained_on} "
        f"(--subset {cfg.subset}; 0: all), {len(data.test_image_names):,} test images; "
        f"{runtime.counted(cfg.epochs, 'epoch')}"
    )


def trainable_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def checkpoint_choice(cfg):
    if cfg.checkpoint:
        return "given with --checkpoint"
    if cfg.mode == "scratch":
        return "none: trained from random weights"
    return f"the final epoch's ({checkpoints.STAGE_ONE_FILE}); never chosen on the test split"


def results_record(cfg, test, protocol, stage1, data, trained, schedule):
    """results.json's summary: the test figures and everything that made them. trained: the
    model, its encoding and the seconds its training took."""
    model, encoding, seconds = trained
    return {
        "top1": round(test.top1, 3),
        "top5": round(test.top5, 3),
        "split": "test",
        "mode": cfg.mode,
        "from_head_layer": cfg.from_head_layer,
        "features": cfg.features,
        "labels_per_class": cfg.labels_per_class,
        "label_fraction": cfg.label_fraction,
        "labels": len(data.labelled_images),
        "protocol": protocol.name,
        "augmented_passes": cfg.augmented_passes,
        "protocol_details": f"{MODE_DETAILS[cfg.mode]}, {protocol.description}, SGD Nesterov, "
        f"cosine lr",
        "epochs": cfg.epochs,
        "steps": cfg.epochs * protocol.steps_per_epoch,
        "schedule": schedule,
        "training_images": data.training_images,
        "subset": cfg.subset,
        "batch_size": cfg.batch_size,
        "lr_per_256": cfg.lr,
        "peak_lr": optimizers.linearly_scaled(cfg.lr, cfg.batch_size),
        "weight_decay": cfg.weight_decay,
        "seed": cfg.seed,
        "seconds": round(seconds, 1),
        "stage1_checkpoint": stage1["path"],
        "stage1_epoch": stage1["epoch"],
        "stage1_trained": checkpoints.trained_for(stage1) if stage1["path"] else None,
        "stage1_checkpoint_choice": checkpoint_choice(cfg),
        "trainable_parameters": trainable_parameters(model),
        **encoding.in_effect,
        **distilled(cfg, protocol),
    }


def distilled(cfg, protocol):
    """What a distillation adds to results.json: its teacher and the images the student saw."""
    if cfg.mode != "distill":
        return {}
    return {
        "teacher": protocol.taught_by.name,
        "teacher_top1": protocol.taught_by.top1,
        "teacher_weights": protocol.taught_by.weights,
        "distill_temperature": cfg.distill_temperature,
        "label_weight": cfg.label_weight,
        "student_arch": cfg.student_arch or "the teacher's, from stage one's weights",
        "student_images": len(protocol.images.dataset),
        "images_seen": protocol.images_seen,
    }


def print_next(run, evaluation, test):
    """The test figures, and the next commands pointed at this run: the later scripts default to
    the newest run, which need not be this one."""
    pointed = f" --run-dir {run.dir}"
    if evaluation.final_dir != run.dir:
        pointed += f" --evaluation {os.path.basename(evaluation.final_dir)}"
    print(
        f"test top-1 {test.top1:.2f}%, top-5 {test.top5:.2f}%; wrote {evaluation.final_dir}/"
        f"{checkpoints.STAGE_TWO_FILE}, results.json; next: python test.py IMAGE{pointed}, "
        f"python visualization.py{pointed}, python confusionMatrix.py{pointed}"
    )


def protocol_for(cfg, model, data, encoding, distill):
    """The protocol the mode trains with; distill: (the Teacher, its images) for a distillation."""
    if cfg.mode == "distill":
        return DistillationProtocol(model, data, encoding, cfg, *distill)
    protocol = PROTOCOLS[cfg.protocol if cfg.mode == "linear" else "per-step"]
    return protocol(model, data, encoding, cfg)


def check_frozen(cfg, model, before, protocol):
    """What stage two must not move did not move: a linear evaluation's encoder and head layers,
    a distillation's teacher."""
    if cfg.mode == "linear":
        check_unchanged(model.representation(), before, "frozen encoder")
    if cfg.mode == "distill":
        check_unchanged(protocol.teacher, protocol.teacher_before, "teacher")


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.LinearEval, argv)
    distributed.refuse_several_processes("trainstage2.py")
    check_label_flags(cfg)
    device = runtime.pick_device(cfg.device)
    runtime.seed_everything(cfg.seed)
    run, stage1 = stage_one(cfg)
    cfg, teacher = taught_by(with_features(cfg, stage1), run, stage1)
    net.check_head_layer(cfg.from_head_layer, checkpoints.head_layers(stage1["config"]))
    cfg, data, distill_images = labelled_data(cfg, stage1, teacher)
    schedule = config.stage_two_schedule_rule(cfg)
    cfg = config.with_stage_two_schedule(cfg, data, stage1["config"]["epochs"])
    encoding = runtime.Encoding.of_settings(cfg, device)
    settings = evaluation_settings(cfg, run, stage1, encoding, teacher)
    evaluation = open_evaluation(run, cfg, data, settings)
    network = network_of(stage1, cfg)
    model = build_model(network, len(data.class_names), cfg).to(device)
    frozen_before = snapshot(model.representation())
    announce(cfg, stage1, model, data, encoding, (teacher, distill_images))
    started = time.perf_counter()
    protocol = protocol_for(cfg, model, data, encoding, (teacher, distill_images))
    test = train_classifier(protocol, evaluation, run.dir, cfg)
    check_frozen(cfg, model, frozen_before, protocol)
    trained = (model, encoding, time.perf_counter() - started)
    results = results_record(cfg, test, protocol, stage1, data, trained, schedule)
    built = {"from_head_layer": cfg.from_head_layer, "centre_features": model.centres_features}
    checkpoint = checkpoints.stage_two(
        model, network, data.class_names, dataclasses.asdict(cfg), built
    )
    results |= {"settings": settings, "weights": checkpoints.weights_digest(checkpoint["model"])}
    save_outputs(evaluation, checkpoint, test, data.test_image_names, results)
    evaluation.finish()
    print_next(run, evaluation, test)


if __name__ == "__main__":
    main()
