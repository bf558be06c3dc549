"""Stage two: linear evaluation. A linear classifier trains on the frozen stage-one encoder.

Reads stage1_best.pth of the newest run (or --run-dir / --checkpoint) and the dataset stage one
used; writes into the run folder: stage2_log.csv (one row per epoch, measured on the TEST split),
stage2.pth (everything test.py needs), stage2_predictions.csv and results.json. It does not
resume: Ctrl-C or SIGTERM stops it after the current step, and running it again starts it over,
which cached features (the default protocol) make cheap.

A CPU-sized run:
    python trainstage2.py --epochs 2 --batch-size 256 --workers 2
"""

import functools
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import config
import evaluate
import loaddataset
import net
import optimizers
import resume
import rundir


def build_model(checkpoint, num_classes, checkpoint_path, cfg):
    """The stage-one encoder, loaded strictly and frozen, under a fresh linear classifier."""
    encoder = net.cifar_resnet(checkpoint["arch"])
    rundir.load_strictly(encoder, net.encoder_state(checkpoint["model"]), checkpoint_path)
    model = net.LinearClassifier(encoder, checkpoint["feature_dim"], num_classes)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def train_one_epoch(
    model, loader, optimizer, lr_at, first_step, device, amp_dtype, cfg, progress, stop
):
    model.train()  # the classifier only: LinearClassifier keeps its encoder in eval mode
    loss_sum, correct, seen = 0.0, 0, 0
    for step, (images, labels) in enumerate(loader, start=first_step):
        optimizers.set_lr(optimizer, lr_at(step))
        images, labels = to_device(images, labels, device, cfg.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        progress.update()
        if stop.received:
            break
    return loss_sum / seen, 100.0 * correct / seen


@torch.no_grad()
def evaluate_split(model, loader, device, amp_dtype, cfg):
    """-> (loss, top-1 %, top-5 %, predictions, labels) over the whole split."""
    model.eval()
    loss_sum, top1, top5, predictions, all_labels = 0.0, 0, 0, [], []
    for images, labels in tqdm(loader, desc="test", leave=False):
        images, labels = to_device(images, labels, device, cfg.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        hits1, hits5 = evaluate.topk_correct(logits, labels, (1, 5))
        top1, top5 = top1 + hits1, top5 + hits5
        predictions.append(logits.argmax(1).cpu())
        all_labels.append(labels.cpu())
    seen = sum(len(labels) for labels in all_labels)
    return (
        loss_sum / seen,
        100.0 * top1 / seen,
        100.0 * top5 / seen,
        torch.cat(predictions),
        torch.cat(all_labels),
    )


class PerStepProtocol:
    """The paper's protocol: the frozen encoder runs on crop + flip images at every step."""

    description = "encoder pass every step on crop + flip images"

    def __init__(self, model, data, device, amp_dtype, cfg):
        self.model, self.data, self.device, self.amp_dtype, self.cfg = (
            model,
            data,
            device,
            amp_dtype,
            cfg,
        )
        self.steps_per_epoch = len(data.train_loader)

    def train_epoch(self, optimizer, lr_at, first_step, progress, stop):
        return train_one_epoch(
            self.model,
            self.data.train_loader,
            optimizer,
            lr_at,
            first_step,
            self.device,
            self.amp_dtype,
            self.cfg,
            progress,
            stop,
        )

    def evaluate(self):
        return evaluate_split(
            self.model, self.data.test_loader, self.device, self.amp_dtype, self.cfg
        )


class CachedFeaturesProtocol:
    """The frozen encoder encodes the training split once (or K crop + flip passes, one per epoch
    in turn) and the test split once; the classifier then trains on the stored features.

    Exact for a frozen encoder in eval mode, whose features do not depend on the batch: only the
    per-step protocol's fresh augmentation every epoch is traded for speed.
    """

    def __init__(self, model, data, device, amp_dtype, cfg):
        self.classifier, self.batch_size = model.classifier, cfg.batch_size
        encode = functools.partial(
            evaluate.extract_features,
            model.encoder,
            device=device,
            autocast_dtype=amp_dtype,
            channels_last=cfg.channels_last,
        )
        passes = max(1, cfg.augmented_passes)
        train_loader = data.train_loader if cfg.augmented_passes else data.plain_train_loader
        self.train_passes = [encode(train_loader) for _ in tqdm(range(passes), desc="encoding")]
        self.test_features, self.test_labels = encode(data.test_loader)
        self.steps_per_epoch = -(-len(self.train_passes[0][0]) // cfg.batch_size)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        kind = (
            f"{cfg.augmented_passes} crop + flip passes"
            if cfg.augmented_passes
            else "one plain pass"
        )
        self.description = f"features cached once ({kind} over the training split)"

    def train_epoch(self, optimizer, lr_at, first_step, progress, stop):
        features, labels = self.train_passes[
            (first_step // self.steps_per_epoch) % len(self.train_passes)
        ]
        order = torch.randperm(len(labels), generator=self.generator).to(labels.device)
        self.classifier.train()
        loss_sum, correct = 0.0, 0
        for step, batch in enumerate(order.split(self.batch_size), start=first_step):
            optimizers.set_lr(optimizer, lr_at(step))
            logits = self.classifier(features[batch])
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
            correct += (logits.argmax(1) == labels[batch]).sum().item()
            progress.update()
            if stop.received:
                break
        return loss_sum / len(labels), 100.0 * correct / len(labels)

    @torch.no_grad()
    def evaluate(self):
        self.classifier.eval()
        logits = self.classifier(self.test_features)
        labels = self.test_labels
        top1, top5 = evaluate.topk_correct(logits, labels, (1, 5))
        return (
            F.cross_entropy(logits, labels).item(),
            100.0 * top1 / len(labels),
            100.0 * top5 / len(labels),
            logits.argmax(1).cpu(),
            labels.cpu(),
        )


PROTOCOLS = {"per-step": PerStepProtocol, "cached": CachedFeaturesProtocol}


def to_device(images, labels, device, channels_last):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def check_encoder_unchanged(encoder, before):
    """Every encoder tensor, BatchNorm running statistics included, must equal stage one's."""
    changed = [
        name
        for name, tensor in encoder.state_dict().items()
        if not torch.equal(tensor.cpu(), before[name])
    ]
    if changed:
        raise RuntimeError(f"the frozen encoder changed during stage two: {changed[:5]}")


def save_outputs(run, model, checkpoint, checkpoint_path, data, predictions, labels, summary, cfg):
    """stage2.pth, stage2_predictions.csv and results.json in the run folder."""
    names = data.class_names
    rundir.save_checkpoint(
        run.path("stage2.pth"),
        {
            "stage": 2,
            "arch": checkpoint["arch"],
            "stem": checkpoint["stem"],
            "feature_dim": checkpoint["feature_dim"],
            "image_size": checkpoint["image_size"],
            "mean": checkpoint["mean"],
            "std": checkpoint["std"],
            "class_names": names,
            "stage1_checkpoint": checkpoint_path,
            "config": config.as_dict(cfg),
            "model": model.state_dict(),
        },
    )
    rundir.write_csv(
        run.path("stage2_predictions.csv"),
        [
            {
                "index": index,
                "label": label,
                "prediction": prediction,
                "label_name": names[label],
                "prediction_name": names[prediction],
            }
            for index, (label, prediction) in enumerate(zip(labels.tolist(), predictions.tolist()))
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


def stop_stage_two(stop, epoch, run):
    """Stage two keeps no checkpoint to resume from: say how to start it over, and exit."""
    print(
        f"\nstopped by {stop.received.name} in stage two, epoch {epoch}; stage two does not "
        f"resume: run the same trainstage2.py command again to start it over (stage one's files "
        f"in {run.dir} are untouched)"
    )
    raise SystemExit(stop.exit_code)


def train_classifier(protocol, classifier, run, cfg):
    """SGD (Nesterov) with a per-step cosine lr over cfg.epochs, one stage2_log.csv row per epoch
    -> the last epoch's (test loss, top-1, top-5, predictions, labels)."""
    peak_lr = cfg.lr * cfg.batch_size / 256
    optimizer = torch.optim.SGD(
        classifier.parameters(),
        lr=peak_lr,
        momentum=cfg.momentum,
        nesterov=True,
        weight_decay=cfg.weight_decay,
    )
    steps_per_epoch = protocol.steps_per_epoch
    lr_at = functools.partial(
        optimizers.warmup_cosine,
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=0,
        peak=peak_lr,
    )
    progress = tqdm(total=cfg.epochs * steps_per_epoch, desc="stage 2", unit="step")
    with resume.StopSignal() as stop:
        for epoch in range(1, cfg.epochs + 1):
            progress.set_description(f"stage 2, epoch {epoch}/{cfg.epochs}")
            started = time.perf_counter()
            first_step = (epoch - 1) * steps_per_epoch
            train_loss, train_top1 = protocol.train_epoch(
                optimizer, lr_at, first_step, progress, stop
            )
            if stop.received:
                stop_stage_two(stop, epoch, run)
            test = protocol.evaluate()
            run.log(
                "stage2_log.csv",
                epoch=epoch,
                train_loss=round(train_loss, 5),
                train_top1=round(train_top1, 3),
                test_loss=round(test[0], 5),
                test_top1=round(test[1], 3),
                test_top5=round(test[2], 3),
                seconds=round(time.perf_counter() - started, 2),
            )
            progress.write(f"epoch {epoch}: test top-1 {test[1]:.2f}%, top-5 {test[2]:.2f}%")
    progress.close()
    return test


@config.one_line_errors
def main(argv=None):
    cfg = config.parse(config.LinearEval, argv)
    device = config.pick_device(cfg.device)
    config.seed_everything(cfg.seed)
    run = rundir.Run(rundir.resolve_run_dir(cfg.run_dir))
    checkpoint_path = cfg.checkpoint or run.path("stage1_best.pth")
    checkpoint = rundir.load_checkpoint(checkpoint_path, stage=1)
    data = loaddataset.linear_eval_data(
        cfg.dataset or checkpoint["config"]["dataset"],
        cfg.data_dir or checkpoint["config"]["data_dir"],
        cfg.subset,
        checkpoint["image_size"],
        checkpoint["mean"],
        checkpoint["std"],
        cfg,
    )
    model = build_model(checkpoint, len(data.class_names), checkpoint_path, cfg).to(device)
    encoder_before = {
        name: t.detach().cpu().clone() for name, t in model.encoder.state_dict().items()
    }
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"{checkpoint['arch']} from {checkpoint_path} (epoch {checkpoint['epoch']}), frozen; "
        f"trainable parameters: {trainable:,} (the linear classifier)"
    )
    started = time.perf_counter()
    amp_dtype = config.autocast_dtype(cfg.precision, device)
    protocol = PROTOCOLS[cfg.protocol](model, data, device, amp_dtype, cfg)
    test_loss, test_top1, test_top5, predictions, labels = train_classifier(
        protocol, model.classifier, run, cfg
    )
    check_encoder_unchanged(model.encoder, encoder_before)
    summary = {
        "top1": round(test_top1, 3),
        "top5": round(test_top5, 3),
        "split": "test",
        "protocol": cfg.protocol,
        "protocol_details": f"linear classifier on the frozen encoder (eval mode), "
        f"{protocol.description}, SGD Nesterov, cosine lr",
        "epochs": cfg.epochs,
        "seconds": round(time.perf_counter() - started, 1),
        "stage1_checkpoint": checkpoint_path,
        "stage1_epoch": checkpoint["epoch"],
        "trainable_parameters": trainable,
    }
    save_outputs(run, model, checkpoint, checkpoint_path, data, predictions, labels, summary, cfg)
    print(
        f"test top-1 {test_top1:.2f}%, top-5 {test_top5:.2f}%; wrote {run.dir}/stage2.pth, "
        f"results.json; next: python test.py IMAGE, python visualization.py, "
        f"python confusionMatrix.py"
    )


if __name__ == "__main__":
    main()
