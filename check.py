"""Check an exported encoder against its card: the weights are the card's (sha256), the encoder
rebuilt in torchvision alone, and each kNN figure on h that the card states measured again on the
recorded data, printed beside the card's with whether they agree within the tolerance stated;
with --linear, each linear probe on h trained again with the protocol the card recorded
(trainstage2.py, on a run folder made of the card and its weights).

Exits 0 when every figure agrees, 1 when one does not, 2 (one line) when the card, the weights
or the dataset is missing or the weights are not the card's.

    python check.py runs/NAME/simclr-resnet18-cifar10-0123456789.json
    python check.py CARD.json --weights https://example.org/simclr-resnet18-cifar10-0123456789.pth
"""

import dataclasses
import os
import subprocess
import sys
import tempfile

import torch

import config
from simclr import augment, cards, checkpoints, datasets, errors, evaluate, loaders_workers
from simclr import rundir, runtime

ROOT = os.path.dirname(os.path.abspath(__file__))

# The re-check measures the same images with the same weights, so only arithmetic can move a
# figure: where this machine runs the card's precision on the card's kind of device, by a query
# or two near a tie (this much, or one query of a small query set, whichever is more); elsewhere
# (bf16 against fp32, a GPU against a CPU) by more.
SAME_ARITHMETIC_POINTS = 0.5
OTHER_ARITHMETIC_POINTS = 2.0


def rechecked(card):
    """The card's kNN figures on h (knn.py's and the monitor's), each as an evaluation entry."""
    return [
        entry
        for entry in card["evaluations"]
        if entry.get("kind") in ("knn", "knn monitor") and entry.get("features") == "h"
    ]


def weights_path(cfg, card_path, card):
    """--weights (a path, or a URL fetched beside the card), else the file the card names."""
    if not cfg.weights:
        return cards.weights_beside(card_path, card)
    if "://" not in cfg.weights:
        return cfg.weights
    path = os.path.join(os.path.dirname(os.path.abspath(card_path)), os.path.basename(cfg.weights))
    if not os.path.isfile(path):
        try:
            torch.hub.download_url_to_file(cfg.weights, path, progress=True)
        except Exception as error:  # URLError, HTTPError, timeouts: all end here
            raise errors.InputError(f"cannot fetch {cfg.weights} ({error}): download it by hand")
    return path


def measure_knn(encoder, card, entry, cfg, device):
    """-> (kNN top-1 (%) of encoder on the entry's data, as knn.py measures it; the precision in
    effect here; how many queries)."""
    # where the entry measured: its own data where it names them (knn.py --data-dir, the
    # monitor's --knn-data-dir), else stage one's
    where = {key: card["data"].get(key) for key in ("dataset", "data_dir", "subset")}
    where |= {key: entry[key] for key in where if entry.get(key) is not None}
    source = datasets.DataSource(
        where["dataset"], cfg.data_dir or where["data_dir"], where["subset"] or 0,
        card["data"].get("data_seed") or 0,
    )  # fmt: skip
    shape = card["encoder"]
    transform = augment.eval_transform(shape["image_size"], shape["mean"], shape["std"])
    asked = entry.get("precision") or card["made"].get("precision") or "fp32"
    dtype, _ = runtime.autocast_choice(asked, device)
    encoding = runtime.Encoding(device, dtype)
    vectors = []
    for split in (source.split(train=True), source.split(False, entry["query_images"])):
        loader = loaders_workers.plain_loader(
            datasets.Transformed(split, transform), cfg.batch_size, cfg.workers
        )
        vectors.append(evaluate.extract_features(encoder, loader, encoding, "check: features"))
    (memory, memory_labels), (queries, labels) = vectors
    predictions = evaluate.knn_predict(
        memory, memory_labels, queries, len(source.class_names), entry["k"], entry["temperature"]
    )
    top1 = 100.0 * (predictions == labels).float().mean().item()
    return top1, runtime.precision_in_effect(dtype), len(labels)


def probed(card):
    """The card's linear probes on h, each as an evaluation entry."""
    return [
        entry
        for entry in card["evaluations"]
        if entry.get("kind") == "linear" and entry.get("features") == "h"
        and not entry.get("from_head_layer")
    ]  # fmt: skip


def run_of_card(card, weights_path, folder):
    """A run folder that stage two reads as the card's run: config.json with the card's settings
    (the rest stage one's defaults) and a finished stage-one checkpoint holding the card's
    encoder."""
    encoder, pretraining, data = card["encoder"], card["pretraining"], card["data"]
    settings = dataclasses.asdict(config.Pretrain())
    settings |= {key: encoder[key] for key in ("arch", "stem", "image_size")}
    settings |= {key: encoder.get(key) for key in ("head", "proj_layers", "proj_dim")}
    settings |= {key: data.get(key) for key in ("dataset", "data_dir", "subset", "data_seed")}
    settings |= {"seed": pretraining.get("seed") or 0, "epochs": pretraining["epochs_trained"]}
    saved = torch.load(weights_path, map_location="cpu", weights_only=True)
    checkpoint = {key: saved[key] for key in ("arch", "stem", "feature_dim", "image_size")}
    checkpoint |= {"mean": saved["mean"], "std": saved["std"], "stage": 1, "config": settings}
    checkpoint |= {"epoch": pretraining["epochs_trained"]}
    checkpoint["model"] = {f"encoder.{key}": value for key, value in saved["state_dict"].items()}
    os.makedirs(folder)
    rundir.write_json(os.path.join(folder, rundir.CONFIG_FILE), {"config": settings})
    checkpoints.save(os.path.join(folder, rundir.STAGE_ONE_FILE), checkpoint)


def measure_linear(card, entry, weights_path, cfg, work_dir):
    """-> (the test top-1 (%) of the card's linear probe trained again with the protocol the
    entry recorded, by trainstage2.py on run_of_card's folder; the precision in effect)."""
    run_dir = os.path.join(work_dir, f"probe-{len(os.listdir(work_dir))}")
    run_of_card(card, weights_path, run_dir)
    words = ["--run-dir", run_dir, "--mode", "linear", "--device", cfg.device]
    words += ["--workers", cfg.workers, "--data-dir", cfg.data_dir or card["data"]["data_dir"]]
    for key in ("epochs", "batch_size", "weight_decay", "momentum", "augmented_passes", "seed"):
        words += [f"--{key.replace('_', '-')}", entry[key]]
    words += ["--lr", entry["lr_per_256"], "--protocol", entry["protocol"]]
    words += [
        "--precision",
        entry["precision"],
        "--validation-fraction",
        entry["validation_fraction"],
    ]
    words += ["--no-feature-norm"] * (entry["feature_norm"] is False)
    for key in ("labels_per_class", "label_fraction", "data_seed"):
        words += [f"--{key.replace('_', '-')}", entry[key]] * (entry[key] is not None)
    command = [sys.executable, os.path.join(ROOT, "trainstage2.py"), *map(str, words)]
    log_path = os.path.join(run_dir, "trainstage2.log")
    with open(log_path, "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        with open(log_path) as log:
            last = [line.strip() for line in log if line.strip()][-1:]
        raise errors.InputError(f"the probe's trainstage2.py exited with {done.returncode}: {last}")
    results = rundir.Results.read(run_dir)
    return results.top1, results.precision


def tolerance(card, entry, precision, device, queries):
    """-> (the points two figures may differ by, why, in words)."""
    card_precision = entry.get("precision") or card["made"].get("precision")
    card_device = card["made"].get("device")
    query = 100.0 / queries
    if card_precision == precision and card_device in (None, device.type):
        points = max(query, SAME_ARITHMETIC_POINTS)
        return points, f"the same images and weights, in {precision} as the card"
    points, where = max(query, OTHER_ARITHMETIC_POINTS), card_device or "a device not recorded"
    return points, (
        f"wider: the card's figure was measured in {card_precision} on {where}, this one in "
        f"{precision} on {device.type}"
    )


def compared(what, entry, top1, tolerance_and_why):
    """Print a figure measured again beside the card's -> whether they agree."""
    points, why = tolerance_and_why
    agrees = abs(top1 - entry["top1"]) <= points
    print(
        f"{what}: card {entry['top1']:.2f}%, measured {top1:.2f}%: "
        f"{'agree' if agrees else 'DISAGREE'} within {points:.2f} points ({why})"
    )
    return agrees


def check_card(card_path, cfg, device):
    """The card's weights checked, then its figures measured again -> how many disagree."""
    try:
        card = cards.read_card(card_path)
        path = weights_path(cfg, card_path, card)
        card, encoder = cards.load_encoder(card_path, path)
    except cards.CardError as error:
        raise errors.InputError(str(error)) from None
    print(f"{card_path}: weights {os.path.basename(path)} are the card's (sha256)")
    encoder, disagree = encoder.to(device), 0
    for entry in rechecked(card):
        top1, precision, queries = measure_knn(encoder, card, entry, cfg, device)
        what = f"{entry['kind']} top-1 on h ({queries:,} queries, k={entry['k']})"
        disagree += not compared(
            what, entry, top1, tolerance(card, entry, precision, device, queries)
        )
    if not rechecked(card):
        print(f"{card_path}: no kNN figure on h to measure again")
    for entry in probed(card) if cfg.linear else ():
        with tempfile.TemporaryDirectory() as work_dir:
            top1, precision = measure_linear(card, entry, path, cfg, work_dir)
        images = entry["test_images"]
        what = f"linear top-1 on h ({entry['epochs']} epochs, {entry['protocol']}, "
        what += f"{images:,} test images)"
        disagree += not compared(
            what, entry, top1, tolerance(card, entry, precision, device, images)
        )
    return disagree


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Check, argv)
    device = runtime.pick_device(cfg.device)
    disagree = sum(check_card(card_path, cfg, device) for card_path in cfg.cards)
    return 1 if disagree else 0


if __name__ == "__main__":
    main()
