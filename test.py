"""Classify images with the stage-two model: prints the top-k classes of each image.

Reads stage2.pth of the newest run (or --run-dir / --checkpoint) and image files or folders; with
--save-dir DIR, writes each image with its predicted label drawn on it into DIR (cat.jpg becomes
cat.jpg.png; a second cat.jpg from another folder cat.jpg-2.png); with --csv FILE, writes every
image's class probabilities. An image that cannot be read gets a one-line error and the others go
on; the exit status is 1 if any failed.

    python test.py some_image.jpg another_folder/ --top-k 3 --csv predictions.csv
"""

import os
import sys

import torch
from PIL import Image, ImageDraw, ImageFont

import config
from simclr import augment
from simclr import errors
import net
from simclr import checkpoints, rundir
from simclr import runtime
from simclr import datasets

LABELLED_IMAGE_SIDE = 256  # images drawn into --save-dir are enlarged to this width
LABEL_PIXELS = 20  # the label's text height on those images


def image_paths(path):
    """A file as given, or a folder's image files -> (paths, error line or None)."""
    if os.path.isdir(path):
        images = sorted(
            os.path.join(folder, name)
            for folder, _, names in os.walk(path)
            for name in names
            if datasets.has_image_extension(name)
        )
        return images, None if images else f"{path}: the folder holds no image files"
    if not os.path.exists(path):
        return [], f"{path}: no such file"
    return [path], None


def report_error(error):
    """Print one error line to stderr; -> 1 if there was an error, else 0."""
    if error:
        print(f"error: {error}", file=sys.stderr, flush=True)
    return int(bool(error))


def output_name(path, taken):
    """A visible file name for the labelled copy of path that no other image of this call has
    taken: the image's own name + .png, then -2, -3... (the name is added to taken)."""
    base = os.path.basename(path).lstrip(".") or "image"
    name, number = f"{base}.png", 1
    while name in taken:
        number += 1
        name = f"{base}-{number}.png"
    taken.add(name)
    return name


def save_labelled(image, text, path):
    """The image enlarged, with the text on a black band along its top."""
    height = max(1, round(image.height * LABELLED_IMAGE_SIDE / image.width))
    image = image.resize((LABELLED_IMAGE_SIDE, height), Image.NEAREST)
    band = LABEL_PIXELS + 8
    canvas = Image.new("RGB", (image.width, image.height + band))
    canvas.paste(image, (0, band))
    font = ImageFont.load_default(size=LABEL_PIXELS)
    ImageDraw.Draw(canvas).text((4, 3), text, fill="white", font=font)
    canvas.save(path)


def say_if_stage_one_moved_on(checkpoint, run_dir):
    """A note on stderr where the stage-two checkpoint was made on other weights than the run's
    stage-one checkpoint holds now (stage one trained on since): its predictions are not those
    of the run as it is."""
    made_on = checkpoint.get("stage1_weights")
    stage_one_path = os.path.join(run_dir, rundir.STAGE_ONE_FILE)
    if not made_on or not os.path.isfile(stage_one_path):
        return
    stage_one = checkpoints.read_stage_one(stage_one_path, run_dir)
    if stage_one.weights != made_on:
        print(
            f"note: this classifier was made on other stage-one weights than {stage_one_path} "
            f"holds now ({stage_one.trained}: stage one trained on since, or "
            f"was replaced); run trainstage2.py again for one of the run as it is",
            file=sys.stderr,
        )


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Predict, argv)
    device = runtime.pick_device(cfg.device)
    run_dir, checkpoint_path = checkpoints.locate(
        2, cfg.run_dir, cfg.checkpoint, cfg.evaluation, needs_run=False
    )
    checkpoint = checkpoints.load(checkpoint_path, stage=2)
    if run_dir:
        say_if_stage_one_moved_on(checkpoint, run_dir)
    model = net.from_stage_two(checkpoint, checkpoint_path).to(device).eval()
    transform = augment.eval_transform(
        checkpoint["image_size"], checkpoint["mean"], checkpoint["std"]
    )
    class_names = checkpoint["class_names"]
    top_k = min(cfg.top_k, len(class_names))
    if cfg.save_dir:
        os.makedirs(cfg.save_dir, exist_ok=True)
    failures, saved_names, rows = 0, set(), []
    for argument in cfg.images:
        paths, error = image_paths(argument)
        failures += report_error(error)
        for path in paths:
            try:
                image = datasets.rgb_loader(path)  # grayscale, 16-bit, CMYK: all become RGB
            except errors.InputError as error:
                failures += report_error(str(error))
                continue
            with torch.no_grad():
                probabilities = model(transform(image)[None].to(device)).softmax(1)[0].cpu()
            top = probabilities.topk(top_k)
            ranked = [
                f"{class_names[index]} {probability:.1%}"
                for probability, index in zip(top.values.tolist(), top.indices.tolist())
            ]
            print(f"{path}: {', '.join(ranked)}", flush=True)
            if cfg.save_dir:
                name = output_name(path, saved_names)
                save_labelled(image, ranked[0], os.path.join(cfg.save_dir, name))
            best = top.indices[0].item()
            rows.append(
                {"image": path, "prediction": class_names[best]}
                | {name: round(p, 5) for name, p in zip(class_names, probabilities.tolist())}
            )
    if cfg.csv and rows:
        rundir.write_csv(cfg.csv, rows)
    return 1 if failures else 0


if __name__ == "__main__":
    main()
