"""Stage two's bookkeeping, handed what it needs by trainstage2.py, which keeps the method itself
(the networks, the step, the loop): the evaluation's identity and folder (never an evaluation made
otherwise replaced silently), its start line, its log, what it saves (stage2.pth, the predictions,
results.json), the checks that what stays frozen did, and the lines it ends with. The pair of
simclr/stage1_bookkeeping.py.
"""

import dataclasses
import os
import typing

import torch

from simclr import checkpoints, distillation, errors, provenance, rundir, runtime


def evaluation_provenance(setup, data):
    """What makes an evaluation's numbers (setup: Setup; data: loaddataset.StageTwoData), as
    results.json records it (simclr/provenance.py): the settings its mode reads, as it used them
    (the precision in effect); what it read, by content (stage one's weights and how far they had
    trained, a distillation's teacher's weights, the network it built and the data's size and
    normalisation); and the mode's recipe and its version. Two evaluations with equal records are
    the same one."""
    cfg, stage1, mode = setup.cfg, setup.stage1, setup.mode
    settings = provenance.settings(cfg, precision=setup.encoding.in_effect["precision"])
    inputs = checkpoints.stage_one_inputs(stage1, with_weights=bool(stage1.weights))
    if cfg.from_head_layer:  # the head layers under the classifier: their widths
        inputs["proj_dim"] = stage1.settings["proj_dim"]
        inputs["proj_layers"] = checkpoints.proj_layers_of(stage1.settings)
    if setup.teacher:
        inputs["teacher_weights"] = setup.teacher.weights
    inputs |= {"training_images": data.training_images}
    inputs |= {"labelled_images": len(data.labelled_images)}
    inputs |= {"test_images": len(data.test_image_names)}
    if data.stage_one_images is not None:
        inputs["stage_one_images"] = len(data.stage_one_images.dataset)
    return provenance.record(settings, inputs, {"recipe": cfg.mode, "version": mode.version})


def check_replaceable(folder, made, replace):
    """An evaluation is never replaced silently: one made otherwise (made: this one's provenance)
    in the folder this one writes to is refused, unless replace (--replace) says to replace it.
    A damaged results.json is replaced with --replace too."""
    if not os.path.isfile(os.path.join(folder, rundir.RESULTS_FILE)):
        return
    try:
        before = rundir.Results.read(folder)
    except errors.InputError:  # damaged
        if not replace:
            raise
        print(f"note: replacing {folder}'s evaluation, whose {rundir.RESULTS_FILE} is damaged")
        return
    if before.provenance == made:
        return
    made_with = f"made with {provenance.differences(before.provenance, made)}"
    if replace:
        print(f"note: replacing {folder}'s evaluation, {made_with}")
        return
    raise errors.InputError(
        f"{folder} holds an evaluation {made_with}: pass --replace to replace it, or "
        f"--evaluation NAME to keep both"
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


class Frozen:
    """What stage two must not move, each with its snapshot taken when it starts: a linear probe's
    encoder and head layers (mode: a config.StageTwoMode), a distillation's teacher
    (built_teacher: distillation.BuiltTeacher, or None)."""

    def __init__(self, model, mode, built_teacher):
        parts = {"frozen encoder": model.representation()} if mode.frozen else {}
        if built_teacher:
            parts["teacher"] = built_teacher.network
        self.parts = {what: (module, snapshot(module)) for what, module in parts.items()}

    def check(self):
        """Each part is as it was snapshotted."""
        for what, (module, before) in self.parts.items():
            check_unchanged(module, before, what)


def trainable_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Setup(typing.NamedTuple):
    """What a stage-two evaluation is made from, as trainstage2.py settled it."""

    run: rundir.Run  # the stage-one run folder
    plan: typing.Any  # config.StageTwoPlan: the settings in effect, the mode, the schedule
    stage1: checkpoints.StageOne  # its checkpoint, or a scratch run's settings alone
    teacher: typing.Any  # a distillation's distillation.Teacher, else None
    encoding: runtime.Encoding

    @property
    def cfg(self):
        return self.plan.settings

    @property
    def mode(self):
        return self.plan.mode


class EvaluationFiles:
    """One stage-two evaluation's folder, rundir.Evaluation (the run folder for the linear one on
    all labels, where test.py and the plots look by default; RUN/evaluations/NAME/ for every
    other), and its lines."""

    def __init__(self, setup, folder, made):
        self.setup, self.folder, self.provenance = setup, folder, made
        self.run, self.cfg, self.mode = setup.run, setup.cfg, setup.mode
        self.stage1, self.teacher = setup.stage1, setup.teacher
        self.train_losses = []  # one per epoch logged

    @classmethod
    def open(cls, setup, data):
        """Check that the evaluation can be made (a teacher that fits the data) and that nothing
        made otherwise is replaced silently, then start writing: into the evaluation's staging
        folder, labelled_images.csv when the labels are a few."""
        run, cfg = setup.run, setup.cfg
        name = cfg.evaluation or rundir.evaluation_name(
            cfg.mode, cfg.labels_per_class, cfg.label_fraction, cfg.from_head_layer
        )
        final_dir = run.dir if name is None else os.path.join(run.dir, rundir.EVALUATIONS, name)
        if setup.teacher:  # before anything is written
            distillation.check_teacher_data(setup.teacher, data)
        made = evaluation_provenance(setup, data)
        check_replaceable(final_dir, made, cfg.replace)
        os.makedirs(final_dir, exist_ok=True)
        folder = rundir.Evaluation(final_dir)
        folder.open()
        if cfg.labels_per_class or cfg.label_fraction:
            rundir.write_csv(folder.path(rundir.LABELLED_IMAGES_FILE), data.labelled_images)
        return cls(setup, folder, made)

    def announce(self, model, data):
        """The start line: what trains from what, where, in which precision, on how many images."""
        cfg, stage1, teacher, encoding = self.cfg, self.stage1, self.teacher, self.setup.encoding
        start = (
            "from random weights"
            if not self.mode.pretrained or cfg.student_arch
            else f"from {stage1.path} ({stage1.trained}), "
            f"{'frozen' if self.mode.frozen else 'fine-tuned'}"
        )
        if cfg.from_head_layer:
            layers = runtime.counted(cfg.from_head_layer, "projection-head layer")
            start += f", {layers} under the classifier"
        if teacher:
            top1 = "" if teacher.top1 is None else f", test top-1 {teacher.top1:.2f}%"
            start += f", taught by {teacher.name}{top1}"
        trained_on = (
            f"{len(data.labelled_images):,} labelled training images of {data.training_images:,}"
            if teacher is None
            else f"{len(data.stage_one_images.dataset):,} images that stage one saw, "
            f"{len(data.labelled_images):,} of them labelled for the teacher, read at label "
            f"weight {cfg.label_weight:g}"
        )
        in_effect = "{precision}, {memory_format}".format(**encoding.in_effect)
        print(
            f"{cfg.mode}: {cfg.student_arch or stage1.arch} {start} on {encoding.device} in "
            f"{in_effect}; trainable parameters: {trainable_parameters(model):,}; {trained_on} "
            f"(--subset {cfg.subset}; 0: all), {len(data.test_image_names):,} test images; "
            f"{runtime.counted(cfg.epochs, 'epoch')}"
        )

    def log(self, epoch, row):
        self.folder.log(rundir.STAGE_TWO_LOG, epoch=epoch, **row)
        self.train_losses.append(row["train_loss"])

    def stopped(self, signal_received, epoch):
        """Stage two keeps no checkpoint to resume from: its files go, and the line says how to
        start it over -> errors.Stopped."""
        self.folder.abandon()
        return errors.Stopped(
            f"stopped by {signal_received.name} in stage two, epoch {epoch}; stage two does not "
            f"resume: run the same trainstage2.py command again to start it over (stage one's "
            f"files in {self.run.dir}, and any evaluation there before, are untouched)",
            signal_received.value,
        )

    def save(self, model, network, data, protocol, measured, seconds):
        """stage2.pth, stage2_predictions.csv and results.json, moved into place together.
        network: what the classifier is built on (checkpoints.stage_two); measured: the test
        split's protocols.EvalResult and the held-out training images' (or None); seconds: what
        training took."""
        cfg, (test, validation) = self.cfg, measured
        built = {"from_head_layer": cfg.from_head_layer, "feature_norm": model.normalises_features}
        checkpoint = checkpoints.stage_two(
            model, network, data.class_names, dataclasses.asdict(cfg), built
        )
        checkpoints.save(self.folder.path(rundir.STAGE_TWO_FILE), checkpoint)
        write_predictions(self.folder.path(rundir.PREDICTIONS_FILE), test, data)
        results = rundir.Results(
            top1=round(test.top1, 3),
            top5=round(test.top5, 3),
            validation_top1=validation and round(validation.top1, 3),
            validation_images=data.validation_images or None,
            class_names=data.class_names,
            per_class_accuracy=per_class_accuracy(test, data.class_names),
            epochs=cfg.epochs,
            mode=cfg.mode,
            from_head_layer=cfg.from_head_layer,
            features=cfg.features,
            labels_per_class=cfg.labels_per_class,
            label_fraction=cfg.label_fraction,
            labels=len(data.labelled_images),
            protocol=protocol.name,
            augmented_passes=cfg.augmented_passes,
            protocol_details=f"{self.mode.description}, {protocol.description}, SGD Nesterov, "
            f"cosine lr",
            steps=cfg.epochs * protocol.steps_per_epoch,
            schedule=self.setup.plan.schedule,
            training_images=data.training_images,
            subset=cfg.subset,
            batch_size=cfg.batch_size,
            lr_per_256=cfg.lr,
            peak_lr=self.setup.plan.peak_lr,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
            seconds=round(seconds, 1),
            stage1_checkpoint=self.stage1.path,
            stage1_epoch=self.stage1.epoch,
            stage1_trained=self.stage1.trained,
            stage1_checkpoint_choice=self.checkpoint_choice(),
            trainable_parameters=trainable_parameters(model),
            **self.setup.encoding.in_effect,
            **self.distilled(protocol),
            weights=provenance.weights_digest(checkpoint["model"]),
            provenance=self.provenance,
        )
        results.write(self.folder.dir)
        self.folder.finish()

    def checkpoint_choice(self):
        if self.cfg.checkpoint:
            return "given with --checkpoint"
        if not self.mode.pretrained:
            return "none: trained from random weights"
        return f"the final epoch's ({rundir.STAGE_ONE_FILE}); never chosen on the test split"

    def distilled(self, protocol):
        """What a distillation adds to results.json: its teacher and the images the student saw."""
        if not self.mode.from_teacher:
            return {}
        cfg, teacher = self.cfg, self.teacher
        return {
            "teacher": teacher.name,
            "teacher_top1": teacher.top1,
            "teacher_weights": teacher.weights,
            "distill_temperature": cfg.distill_temperature,
            "label_weight": cfg.label_weight,
            "student_arch": cfg.student_arch or "the teacher's, from stage one's weights",
            "student_images": len(protocol.images.dataset),
            "images_seen": protocol.images_seen,
        }

    def done(self, test, validation):
        """The warning of a climbing loss if it is due, the figures (the held-out training
        images', to choose by, where there are some; the test split's, measured once), and the
        next commands pointed at this run: the later scripts default to the newest finished run,
        which need not be this one."""
        warning = climbing_warning(self.train_losses[0], self.train_losses[-1], self.cfg.lr)
        if warning:
            print(warning)
        pointed, final_dir = f" --run-dir {self.run.dir}", self.folder.final_dir
        if final_dir != self.run.dir:
            pointed += f" --evaluation {os.path.basename(final_dir)}"
        if validation is not None:
            print(
                f"validation top-1 {validation.top1:.2f}% on {len(validation.labels):,} held-out "
                f"training images: the figure to choose settings by"
            )
        measured_once = " (measured once, after the last epoch)" if validation else ""
        print(
            f"test top-1 {test.top1:.2f}%, top-5 {test.top5:.2f}%{measured_once}; wrote "
            f"{final_dir}/"
            f"{rundir.STAGE_TWO_FILE}, {rundir.RESULTS_FILE}; next: python test.py IMAGE{pointed}, "
            f"python visualization.py{pointed}, python confusionMatrix.py{pointed}"
        )


def climbing_warning(first_loss, last_loss, lr):
    """-> a warning line when the training loss ended above its first epoch's, else None: it
    diverged, or climbed for most of the run, and the test figures are not what the features are
    worth."""
    if last_loss <= first_loss:
        return None
    return (
        f"warning: the training loss ended at {last_loss:.3f}, above its first epoch's "
        f"{first_loss:.3f}: the lr ({lr:g} per 256 images) is too high for these features; "
        f"try --lr {lr / 10:g}"
    )


def write_predictions(path, test, data):
    """stage2_predictions.csv: one row per test image, in the split's order."""
    names = data.class_names
    rows = [
        {
            "index": index,
            "image": image,
            "label": label,
            "prediction": prediction,
            "label_name": names[label],
            "prediction_name": names[prediction],
        }
        for index, (image, label, prediction) in enumerate(
            zip(data.test_image_names, test.labels.tolist(), test.predictions.tolist())
        )
    ]
    rundir.write_csv(path, rows)


def per_class_accuracy(test, class_names):
    labels, predictions = test.labels, test.predictions
    return {
        name: round(100.0 * (predictions[labels == label] == label).float().mean().item(), 2)
        for label, name in enumerate(class_names)
        if (labels == label).any()
    }
