"""The release a GPU run makes, in one command sized for one 10-minute call: from CIFAR-10 as a
folder (or its .tar.gz, extracted first), ResNet-18 stage one with the paper's recipe (LARS,
batch 512, lr 1.0 per 256, temperature 0.5, the CIFAR augmentation) for as many epochs as fit,
then knn.py and the linear probe (100 epochs, cached features, 10% of the training images held
out), export.py's weights and card into OUT, and check.py on that card. It prints its plan first:
the epochs, the batch and the minutes each part is expected to take, from a timing of a few
training steps on this device.

It has not run on a GPU yet. --size tiny runs the same steps on a CPU in seconds (the test suite
does: tests/test_release.py), on any labelled folder.

    python bench/release.py --data data/cifar10-jpeg.tar.gz --out release --minutes 9
    python bench/release.py --size tiny --data DIR --out /tmp/release
"""

import argparse
import os
import sys
import tarfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import net  # noqa: E402
from simclr import launchers, runtime  # noqa: E402

# (stage one's flags, the probe's flags, the most epochs, the precision) of each size
SIZES = {
    "gpu": (
        ["--arch", "resnet18", "--batch-size", "512", "--data-path", "device", "--workers", "16"],
        ["--epochs", "100", "--batch-size", "512", "--workers", "16"],
        800,
        "bf16",
    ),
    "tiny": (
        ["--arch", "resnet18", "--batch-size", "8", "--image-size", "16", "--workers", "0"],
        ["--epochs", "2", "--batch-size", "8", "--workers", "0"],
        1,
        "fp32",
    ),
}
# Seconds set aside for what is not stage one's training: extracting and decoding the images,
# the kNN monitor's last pass, knn.py, the probe's encoding passes and its epochs, export, check.
OTHER_SECONDS = {"gpu": 200, "tiny": 0}
TIMED_STEPS = {"gpu": 10, "tiny": 2}


def data_folder(data, out):
    """The data as a folder: data itself, or its .tar.gz extracted into OUT/data (timed)."""
    if not data.endswith(".tar.gz"):
        return data
    started, folder = time.perf_counter(), os.path.join(out, "data")
    with tarfile.open(data) as archive:
        try:
            archive.extractall(folder, filter="data")  # no paths outside folder, no devices
        except TypeError:  # a Python before the filters: the tarball is our own
            archive.extractall(folder)
    inner = [entry.path for entry in os.scandir(folder) if entry.is_dir()]
    found = folder if os.path.isdir(os.path.join(folder, "train")) else inner[0]
    print(f"extracted {data} into {found} in {time.perf_counter() - started:.0f} s", flush=True)
    return found


def seconds_per_step(size, device, image_size=32):
    """The mean time of a stage-one training step at this size's batch on device, timed over a few
    steps after one of warm-up, on random images: what the plan's epochs are drawn from."""
    flags = SIZES[size][0]
    batch = int(flags[flags.index("--batch-size") + 1])
    if "--image-size" in flags:
        image_size = int(flags[flags.index("--image-size") + 1])
    model = net.SimCLRNet("resnet18").to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dtype, _ = runtime.autocast_choice(SIZES[size][3], device)
    views = torch.randn(2 * batch, 3, image_size, image_size, device=device)
    times = []
    for step in range(1 + TIMED_STEPS[size]):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            _, z = model(views.contiguous(memory_format=torch.channels_last))
        loss = net.nt_xent(z[:batch].float(), z[batch:].float(), 0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return sum(times[1:]) / len(times[1:]), batch


def plan(size, device, minutes, training_images):
    """-> (epochs, batch) that fit minutes, printed with what each part is expected to take."""
    step, batch = seconds_per_step(size, device)
    epoch = step * (training_images // batch)
    budget = minutes * 60 - OTHER_SECONDS[size]
    epochs = max(1, min(SIZES[size][2], int(budget // epoch)))
    print(
        f"plan: ResNet-18, batch {batch}, {epochs} epochs of {training_images // batch} steps at "
        f"{step * 1000:.0f} ms a step on {device.type} ({SIZES[size][3]}): about "
        f"{epochs * epoch / 60:.1f} min of training, {OTHER_SECONDS[size] / 60:.1f} min set aside "
        f"for the data, kNN, the probe, export and check",
        flush=True,
    )
    return epochs, batch


def run(script, *args):
    """python SCRIPT ARGS in this process, as its command line would run it; a non-zero exit
    ends the release there."""
    print(f"$ python {' '.join([script, *map(str, args)])}", flush=True)
    code = launchers.run_here([os.path.join(ROOT, script), *map(str, args)])
    if code:
        raise SystemExit(f"{script} exited with {code}: the release stops")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data", required=True, help="CIFAR-10 as a folder, or its .tar.gz")
    parser.add_argument("--out", required=True, help="the folder of the run, weights and card")
    parser.add_argument("--size", choices=tuple(SIZES), default="gpu")
    parser.add_argument("--minutes", type=float, default=9, help="the whole call's budget")
    parser.add_argument("--device", default="auto")
    cfg = parser.parse_args(argv)
    started = time.perf_counter()
    os.makedirs(cfg.out, exist_ok=True)
    data_dir, device = data_folder(cfg.data, cfg.out), runtime.pick_device(cfg.device)
    training_images = sum(len(files) for _, _, files in os.walk(os.path.join(data_dir, "train")))
    epochs, _ = plan(cfg.size, device, cfg.minutes, training_images)
    stage_one, probe, _, precision = SIZES[cfg.size]
    run_dir, common = os.path.join(cfg.out, "run"), ["--device", cfg.device]
    data = ["--dataset", "folder", "--data-dir", data_dir]
    run("trainstage1.py", *data, *stage_one, "--epochs", epochs, "--precision", precision,
        "--knn-every", max(1, epochs // 5), "--run-dir", run_dir, *common)  # fmt: skip
    run("knn.py", "--run-dir", run_dir, "--precision", precision, *common)
    run("trainstage2.py", "--run-dir", run_dir, *probe, "--validation-fraction", "0.1",
        "--precision", precision, *common)  # fmt: skip
    run("export.py", "--run-dir", run_dir, "--output-dir", cfg.out)
    (card,) = [name for name in os.listdir(cfg.out) if name.endswith(".json")]
    run("check.py", os.path.join(cfg.out, card), "--device", cfg.device)
    print(f"release in {cfg.out}: {card} and its weights; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
