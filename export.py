"""Export a stage-one encoder for use elsewhere: a plain torchvision ResNet state dict named by its
content, and its card beside it.

Reads the stage-one checkpoint of the newest finished run (or --run-dir, or --checkpoint) and the
run folder's records. Writes NAME-HASH.pth (HASH: the first digits of the file's sha256, the form
torch.hub's check_hash reads), with what feeding the encoder needs (arch, stem, feature_dim,
image_size, mean, std), and NAME-HASH.json, its card (docs/card.md): what the encoder was trained
on and how, every evaluation made of these weights, and what made the run; a fact the run did not
record is null. `python check.py NAME-HASH.json` measures the card's kNN figure again.

    python export.py --run-dir runs/NAME
"""

import glob
import os

import torch
import torchvision

import config
import net
from simclr import cards, checkpoints, datasets, errors, provenance, rundir


def weights_of(checkpoint, checkpoint_path):
    """What export writes: the encoder's state dict, torchvision's names, and how to feed it."""
    encoder = net.from_stage_one(checkpoint, checkpoint_path, encoder_only=True)
    exported = {key: checkpoint[key] for key in ("arch", "stem", "feature_dim", "image_size")}
    exported |= {"mean": list(checkpoint["mean"]), "std": list(checkpoint["std"])}
    return exported | {"state_dict": encoder.state_dict()}


def write_named_by_content(folder, name, exported):
    """NAME-HASH.pth in folder, written whole and then renamed -> (its path, its sha256)."""
    temporary = os.path.join(folder, f".{name}.pth.tmp")
    torch.save(exported, temporary)
    sha256 = cards.sha256_of(temporary)
    path = os.path.join(folder, f"{name}-{sha256[: cards.HASH_DIGITS]}.pth")
    os.replace(temporary, path)
    return path, sha256


def stage_one_evaluations(run, weights):
    """Every evaluation made of these stage-one weights (weights: their digest) in the run
    folder, as the card lists them: knn.py's, then stage two's; those of other weights (stage one
    trained on since) are left out."""
    found = []
    for path in sorted(glob.glob(run.path("knn_*.json"))):
        knn = rundir.read_record(rundir.KnnResult, path)
        made = knn.provenance or {}
        if made.get("inputs", {}).get("stage1_weights") != weights:
            continue
        settings = made.get("settings", {})
        found.append({
            "kind": "knn", "file": os.path.basename(path), "top1": round(knn.knn_top1, 3),
            "features": knn.features, "k": knn.knn_k, "temperature": knn.knn_temperature,
            "metric": "cosine similarity, the k nearest vote exp(similarity / temperature)",
            "memory_images": knn.memory_images, "query_images": knn.query_images,
            "dataset": knn.dataset, "data_dir": knn.data_dir, "subset": settings.get("subset"),
            "knn_queries": settings.get("knn_queries"), "seed": settings.get("seed"),
            "precision": settings.get("precision"),
        })  # fmt: skip
    for folder, results in rundir.evaluation_results(run.dir):
        made = results.provenance or {}
        if made.get("inputs", {}).get("stage1_weights") != weights:
            continue
        settings = made.get("settings", {})
        found.append({
            "kind": results.mode, "folder": os.path.relpath(folder, run.dir),
            "top1": results.top1, "top5": results.top5,
            "validation_top1": results.validation_top1,
            "frozen": config.STAGE_TWO_MODES[results.mode].frozen, "epochs": results.epochs,
            "features": results.features, "from_head_layer": results.from_head_layer,
            "feature_norm": settings.get("feature_norm"), "protocol": results.protocol,
            "labels": results.labelled, "labels_per_class": results.labels_per_class,
            "label_fraction": results.label_fraction,
            "validation_fraction": settings.get("validation_fraction", 0.0),
            "test_images": len(rundir.read_csv(os.path.join(folder, rundir.PREDICTIONS_FILE))),
            "precision": results.precision, "batch_size": results.batch_size,
            "lr_per_256": results.lr_per_256, "weight_decay": results.weight_decay,
            "momentum": settings.get("momentum"), "augmented_passes": results.augmented_passes,
            "seed": results.seed, "data_seed": settings.get("data_seed"),
        })  # fmt: skip
    return found


def card_of(checkpoint, run, weights_file, sha256):
    """The card of exported weights, read from the checkpoint and its run's records (run: None
    for a --checkpoint outside any run folder); what was not recorded is None."""
    settings, record = checkpoint.get("config", {}), run and rundir.read_run(run.dir)
    derived = record.derived if record else {}
    log = []
    if run and os.path.isfile(run.path(rundir.STAGE_ONE_LOG)):
        log = rundir.read_table(run.path(rundir.STAGE_ONE_LOG), numbers=("seconds", "knn_top1"))
    monitor = [row for row in log if row["knn_top1"] != ""]
    digest = provenance.weights_digest(checkpoint["model"])
    evaluations = stage_one_evaluations(run, digest) if run else []
    if monitor:
        evaluations.insert(0, {
            "kind": "knn monitor", "top1": float(monitor[-1]["knn_top1"]),
            "epoch": int(monitor[-1]["epoch"]), "features": "h", "k": settings.get("knn_k"),
            "temperature": settings.get("knn_temperature"),
            "query_images": derived.get("knn_queries"), "split": "test",
        })  # fmt: skip
        if settings.get("knn_data_dir"):  # photos without labels: the monitor's labelled folder
            evaluations[0] |= {"dataset": "folder", "data_dir": settings["knn_data_dir"]}
            evaluations[0] |= {"subset": 0}
    seconds = [float(row["seconds"]) for row in log if row["seconds"] != ""]
    return {
        "card_version": cards.CARD_VERSION,
        "weights": {
            "file": weights_file, "sha256": sha256, "head_included": False,
            "what": "torchvision ResNet state dict, fc the identity (its output is h), with arch, "
            "stem, feature_dim, image_size, mean and std",
        },
        "encoder": {
            **{key: checkpoint[key] for key in ("arch", "stem", "feature_dim", "image_size")},
            "mean": list(checkpoint["mean"]), "std": list(checkpoint["std"]),
            **{key: settings.get(key) for key in ("head", "proj_layers", "proj_dim")},
        },
        "data": {
            "dataset": settings.get("dataset"), "data_dir": settings.get("data_dir"),
            "subset": settings.get("subset"),
            "data_seed": datasets.data_seed_of(settings) if "seed" in settings else None,
            "images_trained_on": checkpoint.get("images"), "test_images_trained_on": 0,
        },
        "pretraining": {
            "epochs_trained": checkpoint["epoch"], "epochs": settings.get("epochs"),
            "finished": checkpoints.finished(checkpoint),
            **{key: settings.get(key) for key in (
                "batch_size", "optimizer", "lr", "lr_scaling", "weight_decay", "momentum",
                "temperature", "augment", "blur", "color_strength", "one_branch", "seed",
            )},
            "peak_lr": derived.get("peak_lr"), "warmup_epochs": derived.get("warmup_epochs"),
        },
        "evaluations": evaluations,
        "made": {
            "training_seconds": round(sum(seconds), 1) if seconds else None,
            "device": derived.get("device"), "precision": derived.get("precision"),
            "torch": record.torch if record else None,
            "torchvision": record.torchvision if record else None,
            "git_commit": (record.git_commit or None) if record else None,
            "git_changes": record.git_changes if record else None,
            "run_id": checkpoint.get("run_id"), "started": record.started if record else None,
            "licence": None,
            "exported_with": {"torch": torch.__version__, "torchvision": torchvision.__version__},
        },
    }  # fmt: skip


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Export, argv)
    run_dir, checkpoint_path = checkpoints.locate(1, cfg.run_dir, cfg.checkpoint, needs_run=False)
    checkpoint = checkpoints.load(checkpoint_path, stage=1)
    run_dir = run_dir or os.path.dirname(checkpoint_path) or os.curdir
    checkpoints.note_unfinished(checkpoint, checkpoint_path, run_dir)
    run = rundir.Run(run_dir) if rundir.holds_run(run_dir) else None
    folder = cfg.output_dir or run_dir
    os.makedirs(folder, exist_ok=True)
    name = f"simclr-{checkpoint['arch']}-{checkpoint.get('config', {}).get('dataset', 'data')}"
    path, sha256 = write_named_by_content(folder, name, weights_of(checkpoint, checkpoint_path))
    card = card_of(checkpoint, run, os.path.basename(path), sha256)
    rundir.write_json(cards.card_path_of(path), card)
    print(
        f"wrote {path}: a torchvision {checkpoint['arch']} state dict with the "
        f"{checkpoint['stem']} stem (fc = identity), features of {checkpoint['feature_dim']} "
        f"dimensions; from {checkpoint_path} ({checkpoints.trained_for(checkpoint)}); its card "
        f"{cards.card_path_of(path)}; check it: python check.py {cards.card_path_of(path)}"
    )


if __name__ == "__main__":
    main()
