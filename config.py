"""Every default of the project, one dataclass per script, and the command-line parser made
from them.

A field is one setting: its default is written here once, and `--field-name VALUE` overrides it on
the command line of the script that uses it (`python trainstage1.py --help` lists them all).
"""

import argparse
import dataclasses
import functools
import inspect
import random
import os
import re
import shutil
import sys
import typing

import numpy as np
import torch
from tqdm import tqdm

RUNS_DIR = "runs"  # where stage-one runs create their folders; later scripts pick the newest one
ARCHS = ("resnet18", "resnet34", "resnet50")
DATASETS = ("cifar10", "folder")
PRECISIONS = ("bf16", "fp16", "fp32")
CHOICES = {
    "arch": ARCHS,
    "dataset": DATASETS,
    "precision": PRECISIONS,
    "optimizer": ("lars", "sgd", "adam"),
    "lr_scaling": ("linear", "sqrt", "none"),
    "data_path": ("auto", "device", "workers"),
    "protocol": ("cached", "per-step"),
}
LOWER_BOUNDS = {  # field: (smallest allowed value, why)
    "batch_size": (2, "a contrastive or SGD batch needs at least 2 images"),
    "epochs": (1, "train for at least one epoch"),
    "lr": (1e-12, "the learning rate must be positive"),
    "temperature": (1e-6, "the temperature must be positive"),
    "image_size": (8, "images smaller than 8 pixels vanish in the ResNet"),
    "subset": (0, "0 means the whole training set"),
    "workers": (0, "0 loads data in the main process"),
    "knn_every": (0, "0 turns the kNN monitor off"),
    "knn_k": (1, "kNN needs at least one neighbour"),
    "warmup_epochs": (0, "0 means no warm-up"),
    "top_k": (1, "show at least one class"),
    "proj_dim": (1, "the projection needs at least one dimension"),
    "augmented_passes": (0, "0 encodes the plain training split once"),
}


def positional(help_text, **kwargs):
    """A field given on the command line without a flag (test.py's image paths)."""
    return dataclasses.field(metadata={"positional": True, "help": help_text}, **kwargs)


@dataclasses.dataclass
class Pretrain:
    """Stage one: contrastive pretraining (SimCLR, NT-Xent) of a CIFAR ResNet and its head."""

    dataset: str = "cifar10"  # cifar10 (downloaded by torchvision) | folder (DIR/train/CLASS/*)
    data_dir: str = "./dataset"  # where the dataset lives or is downloaded to
    subset: int = 0  # >0: a seeded, class-balanced subset of this many training images
    image_size: int = 32  # crops are resized to this; CIFAR is 32x32
    arch: str = "resnet50"  # resnet18 | resnet34 | resnet50, with the CIFAR stem
    proj_dim: int = 128  # output size of the projection head
    temperature: float = 0.5  # NT-Xent tau
    blur: bool = False  # Gaussian blur in the augmentation; the paper leaves it off for CIFAR
    epochs: int = 100
    batch_size: int = 512  # images per step; each image gives two views
    optimizer: str = "lars"  # lars | sgd | adam
    lr: typing.Optional[float] = None  # base lr; None: 1.0 (linear), 0.075 (sqrt), 1e-3 for adam
    lr_scaling: str = "linear"  # linear: lr*batch/256 | sqrt: lr*sqrt(batch) | none: lr as given
    warmup_epochs: int = 10  # linear warm-up, then cosine decay to 0, updated every step
    weight_decay: float = 1e-6  # not applied to BatchNorm and bias parameters
    momentum: float = 0.9
    trust_coefficient: float = 1e-3  # LARS eta
    precision: str = "bf16"  # bf16 | fp16 | fp32 autocast; the loss is always computed in fp32
    channels_last: bool = True  # memory format of the encoder; faster convolutions on CPU and GPU
    compile: bool = False  # torch.compile model and batch augmentation: slow start, faster steps
    knn_every: int = 10  # kNN monitor every this many epochs and after the last; 0: off
    knn_k: int = 200
    knn_temperature: float = 0.1
    data_path: str = (
        "auto"  # auto: device if it fits | device: uint8 data, batch augment | workers: PIL
    )
    workers: int = 4  # DataLoader worker processes (workers path, decoding); 0: the main process
    seed: int = 0
    device: str = "auto"  # auto (cuda, else mps, else cpu) | cuda | cuda:1 | mps | cpu
    run_dir: str = ""  # empty: runs/<dataset>-<arch>-<date-time>
    resume: bool = False  # continue the run in --run-dir from its stage1_last.pth


@dataclasses.dataclass
class LinearEval:
    """Stage two: a linear classifier on the frozen stage-one encoder, measured on the test set."""

    run_dir: str = ""  # the stage-one run to evaluate; empty: the newest folder in runs/
    checkpoint: str = ""  # empty: stage1_best.pth of the run
    dataset: str = ""  # empty: the dataset stage one used
    data_dir: str = ""  # empty: the data folder stage one used
    subset: int = 0  # >0: a seeded, class-balanced subset of the training images
    protocol: str = "cached"  # cached: features encoded once | per-step: encoder every step
    augmented_passes: int = 0  # cached: 0: one plain pass; K: K crop+flip passes, in turn
    epochs: int = 100
    batch_size: int = 512
    lr: float = 0.1  # per 256 images: the lr used is lr*batch/256, cosine-decayed to 0
    momentum: float = 0.9  # Nesterov
    weight_decay: float = 0.0
    precision: str = "bf16"  # autocast for the frozen encoder's forward pass
    channels_last: bool = True
    workers: int = 4
    seed: int = 0
    device: str = "auto"


@dataclasses.dataclass
class Predict:
    """Classify images with a trained stage-two model and print the top-k classes of each."""

    images: list = positional("image files or folders of images", default_factory=list)
    checkpoint: str = ""  # empty: stage2.pth of the newest run (or of --run-dir)
    run_dir: str = ""
    top_k: int = 3
    save_dir: str = ""  # non-empty: write each image with its predicted label drawn on it here
    device: str = "auto"


@dataclasses.dataclass
class Plots:
    """Draw a run's logs as PNG files in its folder."""

    run_dir: str = ""  # empty: the newest folder in runs/
    show: bool = False  # also open the figures in windows


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of the whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def field_comments(cls):
    """The comment after each field in the source above: it becomes the field's --help text."""
    lines = inspect.getsource(cls).splitlines()
    matches = (re.match(r"\s+(\w+):[^#]*#\s*(.*)$", line) for line in lines)
    return {match[1]: match[2] for match in matches if match}


def parse(cls, argv=None):
    """Build an argparse parser from the dataclass fields and return the filled-in dataclass.

    A bad value exits with status 2 and one line naming the flag, before anything is written."""
    parser = OneLineErrorParser(description=cls.__doc__)
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if field.metadata.get("positional"):
            parser.add_argument(field.name, nargs="+", help=field.metadata["help"])
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{comments.get(field.name, '')} (default: {field.default})".strip()
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text
            )
            continue
        value_type = typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Union else kind
        choices = CHOICES.get(field.name)
        if choices and field.default not in choices:
            choices = (field.default, *choices)  # an empty default means "as stage one had it"
        parser.add_argument(
            flag, type=value_type, default=field.default, choices=choices, help=help_text
        )
    cfg = cls(**vars(parser.parse_args(argv)))
    for name, (smallest, why) in LOWER_BOUNDS.items():
        value = getattr(cfg, name, None)
        if value is not None and value < smallest:
            parser.error(f"--{name.replace('_', '-')} {value} is too small: {why}")
    return cfg


def as_dict(cfg):
    return dataclasses.asdict(cfg)


def fail(message):
    """Stop a script on bad input: one line naming the problem and the fix, exit status 2."""
    tqdm.write(f"error: {message}", file=sys.stderr)  # on its own line below any progress bar
    raise SystemExit(2)


class InputError(Exception):
    """Bad input met deep inside the work, such as an image that does not decode: raised where it
    is met (maybe in a DataLoader worker) and turned into fail()'s one line by one_line_errors."""


def one_line_errors(main):
    """Wrap a script's main so that an InputError ends it as fail() does. A DataLoader worker
    re-raises it with its traceback in the message: the message is then the last line."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except InputError as error:
            message = str(error).strip().splitlines()[-1]
            fail(message.removeprefix(f"{__name__}.{InputError.__name__}: "))

    return wrapped


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name="auto"):
    """The one place that asks what hardware exists: cuda, else mps, else cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_compile(device):
    """torch.compile on a CPU builds C++: say so now rather than in a trace after the data loads."""
    compilers = (os.environ.get("CXX", ""), "g++", "c++", "clang++")
    if device.type == "cpu" and not any(shutil.which(name) for name in compilers if name):
        fail(
            "--compile on a CPU needs a C++ compiler (g++ or clang++) on PATH: "
            "install one, or drop --compile"
        )


def autocast_dtype(precision, device):
    """The autocast dtype for --precision on this device, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print("note: this GPU has no bf16; using fp32 (pass --precision fp16 for mixed precision)")
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16
