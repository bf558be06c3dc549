"""Stage two: linear evaluation. A linear classifier trains on the frozen stage-one encoder.

Reads stage1_last.pth (the final epoch's, as the paper evaluates) of the newest run (or --run-dir,
or --checkpoint) and the dataset stage one used; writes into the run folder: stage2_log.csv (one
row per epoch, measured on the TEST split), stage2.pth (everything test.py needs),
stage2_predictions.csv and results.json. It does not resume: Ctrl-C or SIGTERM stops it after the
current step, and running it again starts it over, which cached features (the default protocol)
make cheap.

A CPU-sized run:
    python trainstage2.py --epochs 2 --batch-size 256 --workers 2
"""

import dataclasses
import time
import typing

import torch
import torch.nn.functional as F
from tqdm import tqdm

import config
import distributed
import errors
import evaluate
import loaddataset
import net
import optimizers
import rundir
import runtime

LOG_NAME = "stage2_log.csv"


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


def build_model(checkpoint, num_classes, checkpoint_path, cfg):
    """The stage-one encoder, loaded strictly and frozen, under a fresh linear classifier."""
    encoder = net.cifar_resnet(checkpoint["arch"])
    rundir.load_strictly(encoder, net.encoder_state(checkpoint["model"]), checkpoint_path)
    model = net.LinearClassifier(encoder, checkpoint["feature_dim"], num_classes)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


class PerStepProtocol:
    """The paper's protocol: the frozen encoder runs on crop + flip images at every step."""

    description = "encoder pass every step on crop + flip images"

    def __init__(self, model, data, encoding, cfg):
        self.model, self.data, self.encoding = model, data, encoding
        self.steps_per_epoch = len(data.train_loader)

    def batches(self, epoch):
        """(images, labels) on the device; the classifier in train mode."""
        self.model.train()  # the classifier only: LinearClassifier keeps its encoder in eval mode
        for images, labels in self.data.train_loader:
            yield self.encoding.inputs(images), labels.to(self.encoding.device)

    def logits(self, images):
        with self.encoding.autocast():
            return self.model(images)

    @torch.no_grad()
    def evaluate(self):
        self.model.eval()
        logits, labels = [], []
        for images, batch_labels in tqdm(
            self.data.test_loader, desc="test split", leave=False, disable=None
        ):
            logits.append(self.logits(self.encoding.inputs(images)))
            labels.append(batch_labels.to(self.encoding.device))
        return EvalResult.from_logits(torch.cat(logits), torch.cat(labels))


class CachedFeaturesProtocol:
    """The frozen encoder encodes the training split once (or K crop + flip passes, one per epoch
    in turn) and the test split once; the classifier then trains on the stored features.

    Exact for a frozen encoder in eval mode, whose features do not depend on the batch: only the
    per-step protocol's fresh augmentation every epoch is traded for speed.
    """

    def __init__(self, model, data, encoding, cfg):
        self.classifier, self.batch_size = model.classifier, cfg.batch_size
        passes = max(1, cfg.augmented_passes)
        train_loader = data.train_loader if cfg.augmented_passes else data.plain_train_loader
        self.train_passes = [
            evaluate.extract_features(
                model.encoder, train_loader, encoding, f"encoding training split, pass {n}/{passes}"
            )
            for n in range(1, passes + 1)
        ]
        self.test_features, self.test_labels = evaluate.extract_features(
            model.encoder, data.test_loader, encoding, "encoding test split"
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


PROTOCOLS = {"per-step": PerStepProtocol, "cached": CachedFeaturesProtocol}


class ClassifierTraining:
    """SGD (Nesterov) with a per-step cosine lr over cfg.epochs. The step is the same for both
    protocols: they differ only in their batches and in how they compute the logits."""

    def __init__(self, protocol, classifier, cfg):
        self.protocol, self.epochs = protocol, cfg.epochs
        peak_lr = optimizers.linearly_scaled(cfg.lr, cfg.batch_size)
        self.optimizer = torch.optim.SGD(
            classifier.parameters(),
            lr=peak_lr,
            momentum=cfg.momentum,
            nesterov=True,
            weight_decay=cfg.weight_decay,
        )
        self.lr_at = optimizers.schedule(peak_lr, cfg.epochs, protocol.steps_per_epoch)
        total_steps = cfg.epochs * protocol.steps_per_epoch
        self.progress = tqdm(total=total_steps, desc="stage 2", unit="step")

    def train_epoch(self, epoch, stop):
        """One epoch, or until a stop signal arrives -> EpochResult."""
        self.progress.set_description(f"stage 2, epoch {epoch}/{self.epochs}")
        first_step = (epoch - 1) * self.protocol.steps_per_epoch
        loss_sum, correct, seen = 0.0, 0, 0
        for step, (inputs, labels) in enumerate(self.protocol.batches(epoch), start=first_step):
            optimizers.set_lr(self.optimizer, self.lr_at(step))
            logits = self.protocol.logits(inputs)
            loss = F.cross_entropy(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            self.progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            self.progress.update()
            if stop.received:
                break
        return EpochResult(loss_sum / seen, 100.0 * correct / seen)


def train_classifier(protocol, classifier, run, cfg):
    """Train the classifier for cfg.epochs, one stage2_log.csv row per epoch -> the last epoch's
    EvalResult."""
    training = ClassifierTraining(protocol, classifier, cfg)
    with runtime.StopSignal() as stop:
        for epoch in range(1, cfg.epochs + 1):
            started = time.perf_counter()
            train = training.train_epoch(epoch, stop)
            if stop.received:
                raise stopped_stage_two(stop.received, epoch, run)
            test = protocol.evaluate()
            run.log(
                LOG_NAME,
                epoch=epoch,
                train_loss=round(train.loss, 5),
                train_top1=round(train.top1, 3),
                test_loss=round(test.loss, 5),
                test_top1=round(test.top1, 3),
                test_top5=round(test.top5, 3),
                seconds=round(time.perf_counter() - started, 2),
            )
            training.progress.write(
                f"epoch {epoch}: test top-1 {test.top1:.2f}%, top-5 {test.top5:.2f}%"
            )
    training.progress.close()
    return test


def stopped_stage_two(signal_received, epoch, run):
    """Stage two keeps no checkpoint to resume from: say how to start it over."""
    return errors.Stopped(
        f"stopped by {signal_received.name} in stage two, epoch {epoch}; stage two does not "
        f"resume: run the same trainstage2.py command again to start it over (stage one's files "
        f"in {run.dir} are untouched)",
        signal_received.value,
    )


def encoder_snapshot(encoder):
    return {name: tensor.detach().cpu().clone() for name, tensor in encoder.state_dict().items()}


def check_encoder_unchanged(encoder, before):
    """Every encoder tensor, BatchNorm running statistics included, must equal stage one's."""
    changed = [
        name
        for name, tensor in encoder.state_dict().items()
        if not torch.equal(tensor.cpu(), before[name])
    ]
    if changed:
        raise RuntimeError(f"the frozen encoder changed during stage two: {changed[:5]}")


def stage2_checkpoint(model, stage1, stage1_path, class_names, cfg):
    """Everything test.py needs to rebuild and run the classifier."""
    return {
        "stage": 2,
        **{
            key: stage1[key] for key in ("arch", "stem", "feature_dim", "image_size", "mean", "std")
        },
        "class_names": class_names,
        "stage1_checkpoint": stage1_path,
        "config": config.as_dict(cfg),
        "model": model.state_dict(),
    }


def save_outputs(run, checkpoint, test, test_image_names, summary):
    """stage2.pth, stage2_predictions.csv (one row per test image) and results.json."""
    names = checkpoint["class_names"]
    rundir.save_checkpoint(run.path("stage2.pth"), checkpoint)
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


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.LinearEval, argv)
    distributed.refuse_several_processes("trainstage2.py")
    device = runtime.pick_device(cfg.device)
    runtime.seed_everything(cfg.seed)
    run = rundir.Run(rundir.resolve_run_dir(cfg.run_dir, "stage1_last.pth"))
    stage1_path = cfg.checkpoint or run.path("stage1_last.pth")
    stage1 = rundir.load_checkpoint(stage1_path, stage=1)
    cfg = dataclasses.replace(
        cfg,
        dataset=cfg.dataset or stage1["config"]["dataset"],
        data_dir=cfg.data_dir or stage1["config"]["data_dir"],
        subset=stage1["config"]["subset"] if cfg.subset is None else cfg.subset,
    )
    data = loaddataset.linear_eval_data(cfg, stage1["image_size"], stage1["mean"], stage1["std"])
    model = build_model(stage1, len(data.class_names), stage1_path, cfg).to(device)
    encoder_before = encoder_snapshot(model.encoder)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    training_images = len(data.plain_train_loader.dataset)
    print(
        f"{stage1['arch']} from {stage1_path} (epoch {stage1['epoch']}), frozen; "
        f"trainable parameters: {trainable:,} (the linear classifier); "
        f"{training_images:,} training images (--subset {cfg.subset}; 0: all), "
        f"{len(data.test_image_names):,} test images"
    )
    started = time.perf_counter()
    autocast_dtype = runtime.autocast_dtype(cfg.precision, device)
    encoding = evaluate.Encoding(device, autocast_dtype, cfg.channels_last)
    protocol = PROTOCOLS[cfg.protocol](model, data, encoding, cfg)
    test = train_classifier(protocol, model.classifier, run, cfg)
    check_encoder_unchanged(model.encoder, encoder_before)
    summary = {
        "top1": round(test.top1, 3),
        "top5": round(test.top5, 3),
        "split": "test",
        "protocol": cfg.protocol,
        "augmented_passes": cfg.augmented_passes,
        "protocol_details": f"linear classifier on the frozen encoder (eval mode), "
        f"{protocol.description}, SGD Nesterov, cosine lr",
        "epochs": cfg.epochs,
        "training_images": training_images,
        "subset": cfg.subset,
        "batch_size": cfg.batch_size,
        "peak_lr": optimizers.linearly_scaled(cfg.lr, cfg.batch_size),
        "seed": cfg.seed,
        "seconds": round(time.perf_counter() - started, 1),
        "stage1_checkpoint": stage1_path,
        "stage1_epoch": stage1["epoch"],
        "stage1_checkpoint_choice": "given with --checkpoint"
        if cfg.checkpoint
        else "the final epoch's (stage1_last.pth); never chosen on the test split",
        "trainable_parameters": trainable,
    }
    checkpoint = stage2_checkpoint(model, stage1, stage1_path, data.class_names, cfg)
    save_outputs(run, checkpoint, test, data.test_image_names, summary)
    print(
        f"test top-1 {test.top1:.2f}%, top-5 {test.top5:.2f}%; wrote {run.dir}/stage2.pth, "
        f"results.json; next: python test.py IMAGE, python visualization.py, "
        f"python confusionMatrix.py"
    )


if __name__ == "__main__":
    main()
