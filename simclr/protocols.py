"""How stage two feeds its classifier: each protocol turns the labelled images (or, for a
distillation, every image stage one saw) into batches, a loss and what train top-1 counts, names
what trains, and measures the test split; and the results they hand back. The training step itself
is trainstage2.py's, the same for every protocol.
"""

import itertools
import typing

import torch
import torch.nn.functional as F

from simclr import distillation, evaluate, runtime


class EvalResult(typing.NamedTuple):
    """The classifier on a whole split: the test split, or the held-out training images."""

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
    def evaluate(self, split="test"):
        """-> EvalResult on the test split, or on the held-out training images ("validation")."""
        self.model.eval()
        logits, labels = [], []
        loader = self.data.test_loader if split == "test" else self.data.validation_loader
        for images, batch_labels in runtime.progress(
            loader, desc=f"{split} split", unit="batch", leave=False
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
        self.features = {
            split: evaluate.extract_features(
                representation, loader, encoding, f"encoding {split} split"
            )
            for split, loader in (
                ("test", data.test_loader),
                ("validation", data.validation_loader),
            )
            if loader is not None
        }
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
    def evaluate(self, split="test"):
        """-> EvalResult on the test split, or on the held-out training images ("validation")."""
        self.classifier.eval()
        features, labels = self.features[split]
        return EvalResult.from_logits(self.classifier(features), labels)


class DistillationProtocol(PerStepProtocol):
    """SimCLRv2's distillation: the student (model) sees every image stage one saw, crop + flip,
    and learns the frozen teacher's softened predictions of the same view, computed on the fly
    (one teacher forward pass per step, in eval mode); with --label-weight, also the cross-entropy
    on a batch of the teacher's labelled images each step. The images' own labels are never read.
    It is measured on the test split as fine-tuning is."""

    name = "distill"

    def __init__(self, model, data, encoding, cfg, built_teacher):
        """built_teacher: distillation.BuiltTeacher, the teacher read from disk, its network (on the
        device, in eval mode) and the loader of every image stage one saw."""
        super().__init__(model, data, encoding, cfg)
        self.teacher_network = built_teacher.network
        self.images = data.stage_one_images
        self.temperature, self.label_weight = cfg.distill_temperature, cfg.label_weight
        self.steps_per_epoch = len(self.images)
        self.images_seen = 0
        self.description = (
            f"teacher's predictions on the fly, tau {cfg.distill_temperature:g}, label weight "
            f"{cfg.label_weight:g}, {len(self.images.dataset):,} images"
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
            teacher_logits = self.teacher_network(images)
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


def for_mode(mode, model, data, encoding, cfg, built_teacher=None):
    """The protocol a mode (config.StageTwoMode) trains with: --protocol where the mode can take
    it, else the mode's first; built_teacher: a distillation's (DistillationProtocol)."""
    name = cfg.protocol if cfg.protocol in mode.protocols else mode.protocols[0]
    if name == DistillationProtocol.name:
        return DistillationProtocol(model, data, encoding, cfg, built_teacher)
    return PROTOCOLS[name](model, data, encoding, cfg)
