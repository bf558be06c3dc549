"""Classify images with the stage-two model: prints the top-k classes of each image.

Reads stage2.pth of the newest run (or --run-dir / --checkpoint) and image files or folders; with
--save-dir DIR, writes each image with its predicted label drawn on it into DIR. An image that
cannot be read gets a one-line error and the others go on; the exit status is 1 if any failed.

    python test.py some_image.jpg another_folder/ --top-k 3
"""

import os
import sys

import torch
from PIL import Image, ImageDraw

import config
import errors
import net
import rundir
import runtime
import splits
import workerdata

LABELLED_IMAGE_SIDE = 256  # images drawn into --save-dir are enlarged to this width


def image_paths(path):
    """A file as given, or a folder's image files -> (paths, error line or None)."""
    if os.path.isdir(path):
        images = sorted(
            os.path.join(folder, name)
            for folder, _, names in os.walk(path)
            for name in names
            if splits.has_image_extension(name)
        )
        return images, None if images else f"{path}: the folder holds no image files"
    if not os.path.exists(path):
        return [], f"{path}: no such file"
    return [path], None


def load_model(checkpoint, checkpoint_path, device):
    encoder = net.cifar_resnet(checkpoint["arch"])
    model = net.LinearClassifier(encoder, checkpoint["feature_dim"], len(checkpoint["class_names"]))
    rundir.load_strictly(model, checkpoint["model"], checkpoint_path)
    return model.to(device).eval()


def report_error(error):
    """Print one error line to stderr; -> 1 if there was an error, else 0."""
    if error:
        print(f"error: {error}", file=sys.stderr, flush=True)
    return int(bool(error))


def output_name(path):
    """A file name for the labelled copy that keeps images from different folders apart."""
    relative = os.path.splitdrive(os.path.normpath(path))[1].lstrip(os.sep)
    return os.path.splitext(relative.replace(os.sep, "_"))[0] + ".png"


def save_labelled(image, text, path):
    """The image enlarged, with the text on a black band along its top."""
    height = max(1, round(image.height * LABELLED_IMAGE_SIDE / image.width))
    image = image.resize((LABELLED_IMAGE_SIDE, height), Image.NEAREST)
    canvas = Image.new("RGB", (image.width, image.height + 20))
    canvas.paste(image, (0, 20))
    ImageDraw.Draw(canvas).text((4, 4), text, fill="white")
    canvas.save(path)


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Predict, argv)
    device = runtime.pick_device(cfg.device)
    checkpoint_path = cfg.checkpoint or os.path.join(
        rundir.resolve_run_dir(cfg.run_dir), "stage2.pth"
    )
    checkpoint = rundir.load_checkpoint(checkpoint_path, stage=2)
    model = load_model(checkpoint, checkpoint_path, device)
    transform = workerdata.eval_transform(
        checkpoint["image_size"], checkpoint["mean"], checkpoint["std"]
    )
    class_names = checkpoint["class_names"]
    top_k = min(cfg.top_k, len(class_names))
    if cfg.save_dir:
        os.makedirs(cfg.save_dir, exist_ok=True)
    failures = 0
    for argument in cfg.images:
        paths, error = image_paths(argument)
        failures += report_error(error)
        for path in paths:
            try:
                image = splits.rgb_loader(path)  # grayscale, 16-bit, CMYK: all become RGB
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
                save_labelled(image, ranked[0], os.path.join(cfg.save_dir, output_name(path)))
    return 1 if failures else 0


if __name__ == "__main__":
    main()
