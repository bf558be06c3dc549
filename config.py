"""Every default of the project and the rule behind each: one dataclass per script, each followed
by the rules that fill in what it leaves to them.

A field is one setting: its default, its --help text and its allowed values are written beside it,
once, and `--field-name VALUE` overrides it on the command line of the script that uses it
(`python trainstage1.py --help` lists them all; simclr/flags.py makes the command line). A setting
left to its rule (None or empty: the image size, the stem, stage two's epochs and lr) is filled in
once, into a new config, which is what config.json and results.json record. Stage one's plan
(stage_one_plan) resolves that and what the settings come to once the data is known (the peak lr
after batch scaling, the warm-up, the kNN queries, the data path, the augmentation) in one place;
the script hands the plan down, and config.json records its values as derived.
"""

import dataclasses
import math
import typing


from simclr import ablations, checkpoints, datasets, optimizers, rundir, runtime
from simclr import augment as augmentation
from simclr.errors import InputError
from simclr.flags import listed, optional_positional, parse, positional, setting  # noqa: F401
from simclr.rundir import RUNS_DIR, STAGE_ONE_FILE, STAGE_TWO_FILE

# What the networks and the data can be: the networks' and the datasets' own tables say.
ARCHS = ("resnet18", "resnet34", "resnet50")  # net.FEATURE_DIMS gives each one's width of h
STEMS = ("cifar", "imagenet")  # net.resnet_encoder's first layers (--stem's help says which)
DATASETS = (*datasets.TORCHVISION, "folder")
PRECISIONS = ("bf16", "fp16", "fp32")
# More DataLoader workers than this rarely read CIFAR-sized images faster, and each holds memory.
MAX_DEFAULT_WORKERS = 8

# Stage one (Pretrain)
NATIVE_IMAGE_SIZES = {"stl10": 96}  # --image-size by default: this, else 32 (CIFAR, folders)
DEFAULT_IMAGE_SIZE = 32
IMAGENET_STEM_FROM = 64  # --stem by default: cifar below this many pixels, imagenet from it
# --head, and the --proj-layers each means by default; none: no layers, z is h
HEADS = ("mlp", "linear", "none")
HEAD_LAYERS = {"mlp": 2, "linear": 1, "none": 0}
# Stage one's base lr where --lr is not given, by --lr-scaling, and adam's (docs/recipe.md)
BASE_LR = {"linear": 1.0, "sqrt": 0.075}
ADAM_LR = 1e-3
WARMUP_EPOCHS = 10  # stage one's warm-up, the paper's (docs/recipe.md)
WARMUP_MAX_FRACTION = 0.1  # but at most this fraction of --epochs
KNN_MIN_QUERIES = 1000  # the kNN monitor's fewest test images by default (docs/recipe.md)
# --data-path auto keeps a training split on the device up to this size
DEVICE_DATA_LIMIT_BYTES = 8 * 2**30

# Stage two (Evaluate): the paper's epochs and what keeps a few labels training (docs/few-labels.md)
LINEAR_EPOCHS = 100  # the linear evaluation's
# fine-tuning's, on at most 1% of the labels and above (the paper's for 1% and 10%)
FINETUNE_EPOCHS_AT_1_PERCENT, FINETUNE_EPOCHS_ABOVE = 60, 30
FINETUNE_MIN_STEPS = 200  # --min-steps: the fewest steps of finetune and scratch
FINETUNE_TEST_EVALUATIONS = 10  # --test-evaluations: test passes of a mode not tested every epoch
# How a mode's epochs are set where --epochs is not given, by the name its record gives
EPOCH_RULES = {
    "linear": f"linear's {LINEAR_EPOCHS} epochs",
    "stage one": "stage one's epochs",
    "paper": "the paper's epochs, at least {min_steps} steps",
}


@dataclasses.dataclass(frozen=True)
class StageTwoMode:
    """Everything about one stage-two mode. Every question about a mode reads a field here; a new
    mode is a new record in STAGE_TWO_MODES (and a protocol in simclr/protocols.py if it feeds its
    classifier in a new way)."""

    description: str  # for the start line and results.json
    lr: float  # per 256 images, where --lr is not given
    weight_decay: float  # where --weight-decay is not given
    pretrained: bool  # starts from stage one's weights; else from random ones
    frozen: bool  # the encoder and head layers stay as stage one left them: a linear probe
    protocols: (
        tuple  # how it feeds the classifier (simclr/protocols.py): --protocol's, else the first
    )
    tests_every_epoch: bool  # else every 1/--test-evaluations of the run and after the last
    epochs: str  # its rule in EPOCH_RULES, where --epochs is not given
    from_teacher: bool  # learns a --teacher's predictions on every image stage one saw
    version: int  # recorded in results; bumped when the mode changes in a way no setting records

    def test_epochs(self, epochs, test_evaluations):
        """The epochs after which the test split is measured: every epoch where the mode says so
        (a linear probe's cached features make it cheap), else every 1/test_evaluations of the
        run (whole epochs) and the last: fine-tuning on a few labels runs many one-step epochs."""
        spacing = max(1, epochs // test_evaluations)
        every = 1 if self.tests_every_epoch else spacing
        return sorted({*range(every, epochs + 1, every), epochs})


# The stage-two modes; what each is and why its recipe is so: docs/few-labels.md
STAGE_TWO_MODES = {
    "linear": StageTwoMode(
        description="linear classifier on the frozen encoder (eval mode)",
        lr=0.1,
        weight_decay=0.0,
        pretrained=True,
        frozen=True,
        protocols=("cached", "per-step"),
        tests_every_epoch=True,
        epochs="linear",
        from_teacher=False,
        version=2,  # 1: the probe on centred features (before net.FeatureNorm)
    ),
    "finetune": StageTwoMode(
        description="the pretrained encoder and a new linear classifier trained together, "
        "BatchNorm in training mode",
        lr=0.05,
        weight_decay=0.0,
        pretrained=True,
        frozen=False,
        protocols=("per-step",),
        tests_every_epoch=False,
        epochs="paper",
        from_teacher=False,
        version=1,
    ),
    "scratch": StageTwoMode(
        description="the same network from random weights, trained on the same labels with a "
        "recipe of its own (lr_per_256, weight_decay): the supervised baseline",
        lr=0.1,
        weight_decay=5e-4,
        pretrained=False,
        frozen=False,
        protocols=("per-step",),
        tests_every_epoch=False,
        epochs="paper",
        from_teacher=False,
        version=1,
    ),
    "distill": StageTwoMode(
        description="a student trained on every image stage one saw to match the teacher's "
        "softened predictions on the same crop + flip view (SimCLRv2), BatchNorm in training mode",
        lr=0.05,
        weight_decay=0.0,
        pretrained=True,
        frozen=False,
        protocols=("distill",),
        tests_every_epoch=False,
        epochs="stage one",
        from_teacher=True,
        version=1,
    ),
}
MODES = tuple(STAGE_TWO_MODES)

# sweep.py (Sweep)
SLURM_TIME_MINUTES = 24 * 60
CPUS_PER_GPU = 8


# Settings that several scripts share: each written once here, each script's field one call.


def device_setting():
    return setting(
        "auto", "cuda, cuda:1, mps or cpu", shown="auto: cuda, else mps, else cpu", numbers=False
    )


def workers_setting():
    default = min(MAX_DEFAULT_WORKERS, runtime.available_cpus())
    return setting(
        default,
        "DataLoader worker processes for reading images; 0: the main process",
        at_least=(0, "0 loads data in the main process"),
        shown=f"the CPUs this process may use, at most {MAX_DEFAULT_WORKERS}: {default} here",
        numbers=False,
    )


def precision_setting(what):
    return setting(
        "bf16",
        f"autocast for {what}; fp32 where the device lacks native half precision",
        choices=PRECISIONS,
    )


def channels_last_setting():
    return setting(
        True, "channels_last memory format: faster convolutions on CPU and GPU", numbers=False
    )


def run_dir_setting(what):
    return setting("", what, shown=f"the newest finished run in {RUNS_DIR}/", numbers=False)


def stage_one_checkpoint_setting():
    return setting(
        "",
        "the stage-one checkpoint to use; its results go to the run folder it sits in",
        shown=f"{STAGE_ONE_FILE} of the run: the final epoch's",
        numbers=False,  # the digest of its weights stands for it
    )


def dataset_of_run_setting():
    return setting("", "the dataset to use", choices=DATASETS, shown="stage one's")


def data_dir_of_run_setting():
    return setting("", "where that dataset lives", shown="stage one's", path=True)


def subset_of_run_setting():
    return setting(
        None,
        "use a seeded, class-balanced subset of this many training images; 0: all of them",
        at_least=(0, "0 means the whole training set"),
        shown="stage one's --subset",
    )


def random_encoder_setting():
    return setting(
        False, "random weights (seeded by --seed) instead of the checkpoint's: the baseline to beat"
    )


def inference_batch_setting():
    return setting(
        512, "images per forward pass", at_least=(1, "a batch needs at least one image"),
        numbers=False,
    )  # fmt: skip


def features_setting(use):
    return setting("h", f"{use}: h, the encoder's output, or z, the head's", choices=("h", "z"))


TRAINING_SEEDS = "the weights, augmentation and data order, and without --data-seed the data"


def seed_setting(seeds=TRAINING_SEEDS):
    return setting(0, f"seeds {seeds}")


def data_seed_setting():
    return setting(
        None,
        "seeds the data drawn: --subset, the kNN queries, the labels, the held-out images",
        at_least=(0, "seeds are 0 or more"),
        shown="--seed",
    )


def evaluation_setting():
    return setting(
        "",
        "an evaluation in the run's evaluations/ folder, e.g. finetune-10-per-class",
        shown="linear on all labels, in the run folder",
        numbers=False,
        folder_name=True,
    )


# Stage one: trainstage1.py


@dataclasses.dataclass
class Pretrain:
    """Stage one: contrastive pretraining (SimCLR, NT-Xent) of a ResNet and its head."""

    dataset: str = setting(
        "cifar10",
        "downloaded by torchvision, or folder: DIR/train|test/CLASS/* (docs/datasets.md)",
        choices=DATASETS,
    )
    data_dir: str = setting("./dataset", "where the dataset lives or is downloaded to", path=True)
    subset: int = setting(
        0,
        "use a seeded, class-balanced subset of this many training images; 0: all of them",
        at_least=(0, "0 means the whole training set"),
    )
    image_size: typing.Optional[int] = setting(
        None,
        "side in pixels that crops are resized to",
        at_least=(8, "images smaller than 8 pixels vanish in the ResNet"),
        shown=f"the dataset's: {NATIVE_IMAGE_SIZES['stl10']} for STL-10, else {DEFAULT_IMAGE_SIZE}",
    )
    arch: str = setting("resnet50", "the encoder", choices=ARCHS)
    stem: str = setting(
        "",
        "first layers: cifar (3x3 stride 1, no max-pool) or imagenet (7x7 stride 2, max-pool)",
        choices=STEMS,
        shown=f"cifar below {IMAGENET_STEM_FROM} px, imagenet from {IMAGENET_STEM_FROM} px",
    )
    proj_dim: int = setting(
        128,
        "output size of the projection head",
        at_least=(1, "the projection needs at least one dimension"),
    )
    head: str = setting(
        "mlp",
        "projection head g: mlp (--proj-layers deep), linear (one layer) or none (z = h)",
        choices=HEADS,
    )
    proj_layers: typing.Optional[int] = setting(
        None,
        "the head's linear layers: 2 as in SimCLR, 3 as in SimCLRv2 (docs/few-labels.md)",
        at_least=(1, "the head needs at least its output layer; --head none has no head"),
        shown=", ".join(f"{head}: {layers}" for head, layers in HEAD_LAYERS.items()),
    )
    temperature: float = setting(
        0.5, "NT-Xent tau", at_least=(1e-6, "the temperature must be positive")
    )
    blur: bool = setting(
        False,
        "Gaussian blur in the augmentation, as blur in --augment (docs/recipe.md)",
    )
    augment: str = setting(
        ",".join(augmentation.DEFAULT_OPS),
        f"the ops applied, a comma list of {', '.join(augmentation.OPS)}; no crop: the whole image",
    )
    color_strength: float = setting(
        augmentation.SIMCLR.color_strength,
        "colour strength s: brightness, contrast and saturation jitter 0.8s, hue 0.2s",
        at_least=(0, "0 means no colour jitter"),
        at_most=(
            augmentation.MAX_COLOR_STRENGTH,
            f"its hue jitter, {augmentation.HUE_PER_STRENGTH:g}s, may reach at most "
            f"{augmentation.MAX_HUE:g} (torchvision's limit): pass "
            f"{augmentation.MAX_COLOR_STRENGTH:g} or less",
        ),
    )
    one_branch: bool = setting(
        False,
        "the paper's Figure 5: --augment on the first view only, the second the image as it is",
    )
    epochs: int = setting(
        100, "passes over the training split", at_least=(1, "train for at least one epoch")
    )
    batch_size: int = setting(
        512,
        "images per step; each image gives two views",
        at_least=(2, "a contrastive or SGD batch needs at least 2 images"),
    )
    optimizer: str = setting(
        "lars", "lars, sgd (momentum) or adam", choices=("lars", "sgd", "adam")
    )
    lr: typing.Optional[float] = setting(
        None,
        "base lr, scaled by --lr-scaling",
        at_least=(1e-12, "the learning rate must be positive"),
        shown=f"{BASE_LR['linear']} (linear), {BASE_LR['sqrt']} (sqrt), "
        f"{ADAM_LR:.0e} for adam".replace("e-0", "e-"),
    )
    lr_scaling: str = setting(
        "linear",
        "linear: lr*batch/256, sqrt: lr*sqrt(batch), none: lr as given",
        choices=("linear", "sqrt", "none"),
    )
    warmup_epochs: typing.Optional[float] = setting(
        None,
        "linear lr warm-up, then cosine decay to 0, updated every step",
        at_least=(0, "0 means no warm-up"),
        shown=f"{WARMUP_EPOCHS}, at most {WARMUP_MAX_FRACTION:.0%} of --epochs",
    )
    weight_decay: float = setting(1e-6, "not applied to BatchNorm and bias parameters")
    momentum: float = setting(0.9, "momentum of lars and sgd")
    trust_coefficient: float = setting(1e-3, "LARS eta: how far a step may move a weight tensor")
    precision: str = precision_setting("the model (the loss in fp32)")
    channels_last: bool = channels_last_setting()
    compile: bool = setting(
        False,
        "torch.compile the model and the batch augmentation: slow start, faster steps",
        numbers=False,
    )
    activation_checkpointing: bool = setting(
        False,
        "recompute activations in the backward pass: less memory, ~1/3 more compute, the same run",
        numbers=False,
    )
    sync_batchnorm: bool = setting(
        True, "under torchrun, BatchNorm over the global batch; --no-sync-batchnorm: per process"
    )
    knn_every: int = setting(
        10,
        "run the kNN monitor every this many epochs and after the last; 0: never",
        at_least=(0, "0 turns the kNN monitor off"),
    )
    knn_k: int = setting(
        200,
        "neighbours that vote in the kNN monitor",
        at_least=(1, "kNN needs at least one neighbour"),
    )
    knn_temperature: float = setting(0.1, "kNN votes are weighted by exp(similarity / this)")
    knn_queries: typing.Optional[int] = setting(
        None,
        "test images the kNN monitor classifies, a seeded class-balanced choice; 0: all",
        at_least=(0, "0 means the whole test split"),
        shown=f"as many as the training images, at least {KNN_MIN_QUERIES:,}",
    )
    knn_data_dir: str = setting(
        "",
        "a labelled folder (DIR/train/CLASS/*, DIR/test/CLASS/*) for the kNN monitor",
        shown="--data-dir's labels; none: the monitor is off",
        path=True,
    )
    data_path: str = setting(
        "auto",
        "device: augment on the device; workers: PIL in worker processes; auto: device if it fits",
        choices=("auto", "device", "workers"),
    )
    workers: int = workers_setting()
    seed: int = seed_setting()
    data_seed: typing.Optional[int] = data_seed_setting()
    device: str = device_setting()
    run_dir: str = setting(
        "",
        "the run folder to create, or to continue with --resume",
        shown=f"{RUNS_DIR}/DATASET-ARCH-DATE",
        numbers=False,
    )
    resume: bool = setting(
        False, f"continue the run in --run-dir from its {STAGE_ONE_FILE}", numbers=False
    )


def with_dataset_defaults(cfg):
    """A Pretrain cfg with --image-size and --stem filled in where not given, and --proj-layers
    as --head has it (checked against the head when given)."""
    image_size = cfg.image_size or NATIVE_IMAGE_SIZES.get(cfg.dataset, DEFAULT_IMAGE_SIZE)
    stem = cfg.stem or ("imagenet" if image_size >= IMAGENET_STEM_FROM else "cifar")
    return dataclasses.replace(cfg, image_size=image_size, stem=stem, proj_layers=proj_layers(cfg))


def proj_layers(cfg):
    """The projection head's depth: --proj-layers, which must suit --head, or the head's own."""
    layers = cfg.proj_layers
    if layers is None:
        return HEAD_LAYERS[cfg.head]
    if cfg.head == "mlp" and layers < 2:
        raise InputError(
            f"--proj-layers {layers} is no MLP: pass --head linear for one linear layer, or "
            f"--proj-layers 2 or more"
        )
    if cfg.head != "mlp" and layers != HEAD_LAYERS[cfg.head]:
        raise InputError(
            f"--head {cfg.head} has {HEAD_LAYERS[cfg.head]} layers, not --proj-layers {layers}: "
            f"pass --head mlp for a deeper head"
        )
    return layers


def augmentation_ops(cfg):
    """--augment as a tuple of ops (blur too with --blur); an unknown op is refused."""
    ops = tuple(op.strip() for op in cfg.augment.split(",") if op.strip())
    unknown = [op for op in ops if op not in augmentation.OPS]
    if not ops:
        raise InputError(f"--augment is empty: pass a comma list of {', '.join(augmentation.OPS)}")
    if unknown:
        raise InputError(
            f"--augment {cfg.augment}: {', '.join(unknown)} is no augmentation: pass a comma "
            f"list of {', '.join(augmentation.OPS)}"
        )
    return ops + ("blur",) * cfg.blur


def peak_lr(cfg):
    """Stage one's lr after warm-up: --lr (else BASE_LR, ADAM_LR for adam) scaled by
    --lr-scaling."""
    if cfg.optimizer == "adam" and cfg.lr is None:
        return ADAM_LR
    if cfg.lr_scaling == "sqrt":
        return (BASE_LR["sqrt"] if cfg.lr is None else cfg.lr) * math.sqrt(cfg.batch_size)
    base_lr = BASE_LR["linear"] if cfg.lr is None else cfg.lr
    return (
        optimizers.linearly_scaled(base_lr, cfg.batch_size)
        if cfg.lr_scaling == "linear"
        else base_lr
    )


def warmup_epochs(cfg):
    """--warmup-epochs if given, else the paper's 10 epochs but never more than a fixed fraction
    of the run: 10 epochs of a 5-epoch run would keep the lr below its peak all the way."""
    if cfg.warmup_epochs is not None:
        return cfg.warmup_epochs
    return min(WARMUP_EPOCHS, WARMUP_MAX_FRACTION * cfg.epochs)


def data_path(cfg, training_images, device):
    """'device' or 'workers': --data-path, or for auto whether the uint8 training split fits."""
    if cfg.data_path != "auto":
        return cfg.data_path
    limit, memory = DEVICE_DATA_LIMIT_BYTES, runtime.device_memory(device)
    if memory is not None:  # a GPU: leave most of its memory to the model
        limit = min(limit, memory // 8)
    return "device" if training_images * 3 * cfg.image_size**2 <= limit else "workers"


def knn_queries(cfg, training_images, test_images):
    """How many test images the kNN monitor classifies: --knn-queries (0: all), or by default
    as many as the training images, at least KNN_MIN_QUERIES."""
    if cfg.knn_queries is not None:
        return min(cfg.knn_queries or test_images, test_images)
    return min(test_images, max(KNN_MIN_QUERIES, training_images))


@dataclasses.dataclass(frozen=True)
class StageOnePlan:
    """Stage one's settings in effect and what they come to once its data is known, resolved
    once (stage_one_plan): loading, training and the records read this, never config again."""

    settings: Pretrain  # the flags, with the dataset's defaults filled in
    augmentation: augmentation.AugmentationSpec  # the view pairs' ops and strengths
    data_path: str  # "device" or "workers"
    knn_queries: int  # test images the kNN monitor classifies (0: the monitor has none)
    peak_lr: float
    warmup_epochs: float

    def lr_schedule(self, steps_per_epoch):
        """0-based global step -> lr: warm-up to the peak, then cosine decay to 0."""
        epochs = self.settings.epochs
        return optimizers.schedule(self.peak_lr, epochs, steps_per_epoch, self.warmup_epochs)


def stage_one_plan(cfg, data, device):
    """The StageOnePlan of a Pretrain cfg on data, a loaddataset.PretrainSources: how many images
    it trains on and its kNN monitor has."""
    cfg = with_dataset_defaults(cfg)
    queries = knn_queries(cfg, data.memory_images, data.test_images) if data.monitor else 0
    ops, path = augmentation_ops(cfg), data_path(cfg, data.pretraining_images, device)
    warmup, lr = warmup_epochs(cfg), peak_lr(cfg)
    return StageOnePlan(
        settings=cfg,
        augmentation=augmentation.spec_of(ops, cfg.color_strength, cfg.one_branch),
        data_path=path,
        knn_queries=queries,
        peak_lr=lr,
        warmup_epochs=warmup,
    )


# Stage two: trainstage2.py


@dataclasses.dataclass
class Evaluate:
    """Stage two: a classifier on the stage-one encoder (linear: frozen; finetune: trained with
    it), or the same network from scratch, on all or a few labels, or a student distilled from
    one of those on every image stage one saw; measured on the test set."""

    run_dir: str = run_dir_setting("the stage-one run to evaluate")
    checkpoint: str = stage_one_checkpoint_setting()
    evaluation: str = setting(
        "",
        "the folder to write this evaluation into, RUN/evaluations/NAME",
        shown="MODE-LABELS (e.g. finetune-10-per-class); linear on all labels: the run folder",
        numbers=False,
        folder_name=True,
    )
    replace: bool = setting(
        False,
        "replace an evaluation in that folder made otherwise (without it: this one is refused)",
        numbers=False,
    )
    dataset: str = dataset_of_run_setting()
    data_dir: str = data_dir_of_run_setting()
    subset: typing.Optional[int] = subset_of_run_setting()
    mode: str = setting(
        "linear",
        "linear (frozen encoder), finetune, scratch (random weights), distill (docs/few-labels.md)",
        choices=MODES,
    )
    from_head_layer: typing.Optional[int] = setting(
        None,
        "projection-head layers kept under the classifier and trained with it (SimCLRv2: 1)",
        at_least=(0, "0 puts the classifier on the encoder's h"),
        shown="0, the encoder's h; distill: the teacher's",
    )
    features: str = features_setting("the classifier's input (z: every head layer kept)")
    teacher: str = setting(
        "",
        "distill: the run's evaluation that teaches, e.g. finetune-10-per-class",
        shown="none",
        numbers=False,  # the digest of its weights stands for it
        only={"mode": ("distill",)},
        folder_name=True,
    )
    student_arch: str = setting(
        "",
        "distill: a student of this architecture from random weights, with stage one's stem",
        choices=ARCHS,
        shown="the teacher's network from stage one's weights (self-distillation)",
        only={"mode": ("distill",)},
    )
    distill_temperature: float = setting(
        1.0,
        "distill: tau of the teacher's and the student's softmax",
        at_least=(1e-6, "the temperature must be positive"),
        only={"mode": ("distill",)},
    )
    label_weight: float = setting(
        0.0,
        "distill: weight of a cross-entropy on the teacher's labels; 0: none, as SimCLRv2",
        at_least=(0, "0 leaves the labels out"),
        only={"mode": ("distill",)},
    )
    labels_per_class: typing.Optional[int] = setting(
        None,
        "train on a seeded choice of this many labelled images per class",
        at_least=(1, "keep at least one label per class"),
        shown="all labels",
    )
    label_fraction: typing.Optional[float] = setting(
        None,
        "train on this fraction (0 to 1] of each class's labelled images, seeded",
        at_least=(1e-9, "the fraction must be above 0"),
        shown="all labels",
    )
    validation_fraction: float = setting(
        0.0,
        "hold out this fraction of each class's training images and measure on them; 0: none",
        at_least=(0, "0 holds none out"),
        at_most=(0.5, "hold out at most half of each class"),
    )
    min_steps: int = setting(
        FINETUNE_MIN_STEPS,
        "finetune, scratch: train at least this many steps where --epochs is not given",
        at_least=(1, "train for at least one step"),
        # read where --epochs is not given; the epochs it sets are what results record
        only={"mode": ("finetune", "scratch"), "epochs": (None,)},
    )
    test_evaluations: int = setting(
        FINETUNE_TEST_EVALUATIONS,
        "finetune, scratch, distill: test at this many evenly spaced epochs, the last included",
        at_least=(1, "1 measures the test split after the last epoch only"),
        only={"mode": ("finetune", "scratch", "distill")},
    )
    feature_norm: bool = setting(
        True,
        "linear: centre the features and scale them to a fixed mean squared norm (docs/recipe.md)",
        only={"mode": ("linear",)},
    )
    protocol: str = setting(
        "cached",
        "linear: cached: features computed once; per-step: an encoder pass every step",
        choices=("cached", "per-step"),
        only={"mode": ("linear",)},
    )
    augmented_passes: int = setting(
        0,
        "linear, cached: encode the training split this many times with crop + flip; 0: plain once",
        at_least=(0, "0 encodes the plain training split once"),
        only={"mode": ("linear",), "protocol": ("cached",)},
    )
    epochs: typing.Optional[int] = setting(
        None,
        "passes over the labelled training images",
        at_least=(1, "train for at least one epoch"),
        shown=f"linear: {LINEAR_EPOCHS}; finetune, scratch: {FINETUNE_EPOCHS_AT_1_PERCENT} with "
        f"at most 1% of the labels, else {FINETUNE_EPOCHS_ABOVE}, more to reach --min-steps; "
        f"distill: stage one's epochs, over every image stage one saw",
    )
    batch_size: int = setting(
        512,
        "images per step, at most the labelled ones (distill: of every image stage one saw)",
        at_least=(2, "a contrastive or SGD batch needs at least 2 images"),
    )
    lr: typing.Optional[float] = setting(
        None,
        "lr per 256 images: the lr used is lr*batch/256, cosine-decayed to 0",
        at_least=(1e-12, "the learning rate must be positive"),
        shown="; ".join(f"{name}: {mode.lr:g}" for name, mode in STAGE_TWO_MODES.items()),
    )
    momentum: float = setting(0.9, "Nesterov momentum")
    weight_decay: typing.Optional[float] = setting(
        None,
        "weight decay of what trains",
        at_least=(0, "0 means no weight decay"),
        shown="; ".join(f"{name}: {mode.weight_decay:g}" for name, mode in STAGE_TWO_MODES.items()),
    )
    precision: str = precision_setting("the encoder's forward pass")
    channels_last: bool = channels_last_setting()
    workers: int = workers_setting()
    seed: int = seed_setting()
    data_seed: typing.Optional[int] = data_seed_setting()
    device: str = device_setting()


def check_label_flags(cfg):
    if cfg.labels_per_class and cfg.label_fraction:
        raise InputError("pass --labels-per-class or --label-fraction, not both")
    if cfg.label_fraction is not None and cfg.label_fraction > 1:
        raise InputError(
            f"--label-fraction {cfg.label_fraction:g} is above 1: pass a fraction in (0, 1], or "
            f"leave it out for all labels"
        )


def with_stage_two_defaults(cfg, stage_one_settings, teacher_settings=None):
    """A Evaluate cfg with what it leaves to a rule filled in, before any data is read: the
    dataset, data folder and subset (stage one's where not given); --from-head-layer (0: the
    encoder's h; every head layer for --features z); and a distillation's labels, data and head
    layers, its teacher's (teacher_settings: the teacher's stage2.pth config), since the student
    learns from what the teacher was given."""
    check_label_flags(cfg)
    mode, layers = STAGE_TWO_MODES[cfg.mode], checkpoints.proj_layers_of(stage_one_settings)
    from_head_layer = cfg.from_head_layer
    if cfg.features == "z":  # the classifier on every projection-head layer, which gives z
        if mode.from_teacher or from_head_layer not in (None, layers):
            raise InputError(
                f"--features z puts the classifier on all {layers} projection-head layers: leave "
                f"out --from-head-layer (distill: the student reads what its teacher reads)"
            )
        from_head_layer = layers
    given = stage_one_settings
    if mode.from_teacher:
        given = teacher_settings
        from_head_layer = student_head_layer(cfg, teacher_settings, from_head_layer)
        cfg = dataclasses.replace(
            cfg,
            labels_per_class=teacher_settings["labels_per_class"],
            label_fraction=teacher_settings["label_fraction"],
            validation_fraction=teacher_settings.get("validation_fraction", 0.0),
        )
    checkpoints.check_head_layer(from_head_layer or 0, layers)
    dataset, data_dir, subset = datasets.of_run(given, cfg.dataset, cfg.data_dir, cfg.subset)
    return dataclasses.replace(
        cfg, dataset=dataset, data_dir=data_dir, subset=subset, from_head_layer=from_head_layer or 0
    )


def student_head_layer(cfg, teacher_settings, from_head_layer):
    """A distillation's --from-head-layer: as given, else a student of stage one's network reads
    what its teacher reads and a --student-arch one reads h; its labels must be the teacher's."""
    teachers_labels = (teacher_settings["labels_per_class"], teacher_settings["label_fraction"])
    if (cfg.labels_per_class, cfg.label_fraction) not in [(None, None), teachers_labels]:
        raise InputError(
            f"--teacher {cfg.teacher} is {teacher_words(teacher_settings)}: the student uses the "
            f"teacher's labels, so leave out --labels-per-class and --label-fraction"
        )
    if cfg.student_arch and from_head_layer:
        raise InputError(
            "--student-arch trains a student from random weights, with no head layers of stage "
            "one to keep: leave out --from-head-layer"
        )
    if from_head_layer is None:
        return 0 if cfg.student_arch else teacher_settings["from_head_layer"]
    return from_head_layer


def teacher_words(settings):
    """A teacher in words, from its stage2.pth's settings: 'finetune on 10 labels per class'."""
    keys = ("mode", "from_head_layer", "labels_per_class", "label_fraction")
    return rundir.evaluation_title(*(settings[key] for key in keys))


def stage_two_schedule_rule(cfg):
    """What sets the epochs, so that evaluations trained alike can be told from the others:
    '--epochs 2', 'linear's 100 epochs' or 'the paper's epochs, at least 200 steps'."""
    if cfg.epochs:
        return f"--epochs {cfg.epochs}"
    return EPOCH_RULES[STAGE_TWO_MODES[cfg.mode].epochs].format(min_steps=cfg.min_steps)


def with_stage_two_schedule(cfg, data, stage_one_epochs):
    """A Evaluate cfg with the batch that fits the labels (data: loaddataset.StageTwoData),
    and the mode's epochs, lr and weight decay where not given. The paper's epochs: those for its
    share of the labels, more if they would take fewer than --min-steps steps; stage one's: what
    stage one trained (stage_one_epochs)."""
    mode = STAGE_TWO_MODES[cfg.mode]
    weight_decay = mode.weight_decay if cfg.weight_decay is None else cfg.weight_decay
    epochs = cfg.epochs
    if epochs is None and mode.epochs == "linear":
        epochs = LINEAR_EPOCHS
    elif epochs is None and mode.epochs == "stage one":
        epochs = stage_one_epochs
    elif epochs is None:
        steps_per_epoch = -(-len(data.labelled_images) // data.batch_size)
        few = len(data.labelled_images) <= 0.01 * data.training_images
        paper = FINETUNE_EPOCHS_AT_1_PERCENT if few else FINETUNE_EPOCHS_ABOVE
        epochs = max(paper, -(-cfg.min_steps // steps_per_epoch))
    # a student's batches are of every image stage one saw, not of the few labelled ones
    batch_size = cfg.batch_size if mode.from_teacher else data.batch_size
    return dataclasses.replace(
        cfg, batch_size=batch_size, lr=cfg.lr or mode.lr, epochs=epochs, weight_decay=weight_decay
    )


@dataclasses.dataclass(frozen=True)
class StageTwoPlan:
    """A stage-two evaluation's settings in effect and what they come to once its data is known,
    resolved once (stage_two_plan): loading, training and the records read this."""

    settings: Evaluate  # every default filled in: the mode's, the labels', the schedule's
    mode: StageTwoMode
    schedule: str  # what set the epochs (stage_two_schedule_rule)
    peak_lr: float  # --lr per 256 images, scaled to the batch
    test_epochs: tuple  # after which the held-out images (else the test split) are measured


def stage_two_plan(cfg, data, stage_one_epochs):
    """The StageTwoPlan of a Evaluate cfg that with_stage_two_defaults filled in, on data (a
    loaddataset.StageTwoData) after stage_one_epochs of stage one."""
    schedule = stage_two_schedule_rule(cfg)
    cfg = with_stage_two_schedule(cfg, data, stage_one_epochs)
    mode = STAGE_TWO_MODES[cfg.mode]
    return StageTwoPlan(
        settings=cfg,
        mode=mode,
        schedule=schedule,
        peak_lr=optimizers.linearly_scaled(cfg.lr, cfg.batch_size),
        test_epochs=tuple(mode.test_epochs(cfg.epochs, cfg.test_evaluations)),
    )


# Looking at a stage-one encoder: knn.py, pictures.py


def encoder_look(name, doc, run_dir_help, seeds, **own):
    """The settings dataclass of a script that looks at a stage-one encoder without training it:
    the run, its encoder and the data (stage one's unless given), the script's own fields (own:
    name=(type, field)), then those of the forward pass; seeds: what --seed seeds there. What the
    scripts share is declared once, here, in the order of their --help."""
    fields = [
        ("run_dir", str, run_dir_setting(run_dir_help)),
        ("checkpoint", str, stage_one_checkpoint_setting()),
        ("random", bool, random_encoder_setting()),
        ("dataset", str, dataset_of_run_setting()),
        ("data_dir", str, data_dir_of_run_setting()),
        ("subset", typing.Optional[int], subset_of_run_setting()),
        *((field_name, *typed) for field_name, typed in own.items()),
        ("batch_size", int, inference_batch_setting()),
        ("precision", str, precision_setting("the encoder's forward pass")),
        ("channels_last", bool, channels_last_setting()),
        ("workers", int, workers_setting()),
        ("seed", int, seed_setting(seeds)),
        ("device", str, device_setting()),
    ]
    namespace = {"__doc__": doc, "__module__": __name__}
    return dataclasses.make_dataclass(name, fields, namespace=namespace)


Knn = encoder_look(
    "Knn",
    """kNN top-1 of a stage-one encoder on any dataset: its plain training images (cut to
    --subset) are the memory, its test images the queries, at stage one's image size and
    normalisation; each of the k nearest votes with exp(cosine similarity / temperature).""",
    "the stage-one run whose encoder to measure",
    "--random's encoder",
    knn_queries=(int, setting(
        0, "test images classified, a seeded class-balanced choice; 0: all of them",
        at_least=(0, "0 classifies the whole test split"),
    )),
    features=(str, features_setting("what the neighbours are found by")),
    knn_k=(typing.Optional[int], setting(
        None, "neighbours that vote", at_least=(1, "at least one neighbour votes"),
        shown="stage one's",
    )),
    knn_temperature=(typing.Optional[float], setting(
        None, "temperature of the votes", at_least=(1e-6, "the temperature must be positive"),
        shown="stage one's",
    )),
)  # fmt: skip


Pictures = encoder_look(
    "Pictures",
    """Pictures of what a stage-one encoder learned, written into the run folder: tsne.png, a
    t-SNE of h and of z for test images coloured by class, and neighbours.png, test images (one
    row each) with their nearest training images by cosine similarity of h, wrong classes marked.""",
    "the stage-one run whose encoder to picture",
    "--random's encoder and the t-SNE's layout",
    tsne_images=(int, setting(
        2000, "test images in the t-SNE, a seeded class-balanced choice; 0: all of them",
        at_least=(0, "0 takes the whole test split"),
    )),
    neighbour_rows=(int, setting(
        8, "test images in the neighbour grid, a seeded class-balanced choice, one row each",
        at_least=(1, "show at least one test image"),
    )),
    neighbours=(int, setting(
        8, "nearest training images shown per test image", at_least=(1, "show at least one")
    )),
    features=(str, features_setting("what the neighbour grid's similarity is of")),
)  # fmt: skip


# Reading a run: test.py, export.py, visualization.py and confusionMatrix.py


@dataclasses.dataclass
class Predict:
    """Classify images with a trained stage-two model and print the top-k classes of each."""

    images: list = positional("image files or folders of images")
    checkpoint: str = setting(
        "",
        "the stage-two checkpoint",
        shown=f"{STAGE_TWO_FILE} of --run-dir or of the newest finished run",
    )
    run_dir: str = setting(
        "",
        f"the run whose {STAGE_TWO_FILE} to use",
        shown=f"the newest finished run in {RUNS_DIR}/",
    )
    evaluation: str = evaluation_setting()
    top_k: int = setting(3, "classes printed per image", at_least=(1, "show at least one class"))
    save_dir: str = setting(
        "", "write each image with its predicted label drawn on it into this folder", shown="none"
    )
    csv: str = setting(
        "",
        "write every image's predicted class and class probabilities to this CSV file",
        shown="none",
    )
    device: str = device_setting()


@dataclasses.dataclass
class Export:
    """Write a stage-one encoder as a plain torchvision ResNet state dict named by its content,
    and its card beside it (docs/card.md), for use elsewhere."""

    run_dir: str = setting("", "the run to export", shown=f"the newest finished run in {RUNS_DIR}/")
    checkpoint: str = setting("", "the stage-one checkpoint", shown=f"{STAGE_ONE_FILE} of the run")
    output_dir: str = setting(
        "", "the folder to write the weights and their card into", shown="the run folder"
    )


@dataclasses.dataclass
class Check:
    """Check exported encoders against their cards (docs/card.md): the weights' sha256, then each
    kNN figure on h measured again on the recorded data, beside the card's."""

    cards: list = positional("cards that export.py wrote (NAME-HASH.json)")
    weights: str = setting(
        "",
        "the weights: a path, or a URL fetched beside the card",
        shown="the file the card names, beside it",
    )
    data_dir: str = setting("", "where the card's dataset lives", shown="the card's", path=True)
    linear: bool = setting(
        False, "also train the card's linear probes on h again, as each was recorded, and compare"
    )
    batch_size: int = inference_batch_setting()
    workers: int = workers_setting()
    device: str = device_setting()


@dataclasses.dataclass
class Reproduce:
    """Run receipts' commands again in new folders and compare each figure with the receipt's."""

    receipts: list = positional("receipts to reproduce (receipts/*.json)")
    data_dir: str = setting(
        "./cifar10-folder",
        "CIFAR-10 as a folder (docs/datasets.md), put in place of DATA_DIR in the commands",
        path=True,
    )
    work_dir: str = setting(
        f"{RUNS_DIR}/reproduce", "where each reproduction gets a new folder", path=True
    )


@dataclasses.dataclass
class Plots:
    """Draw a run's logs as PNG files in its folder."""

    run_dir: str = setting("", "the run to plot", shown=f"the newest finished run in {RUNS_DIR}/")
    evaluation: str = evaluation_setting()
    show: bool = setting(False, "also open the figures in windows")


# The paper's ablations: sweep.py


@dataclasses.dataclass
class Sweep:
    """Run one of the paper's ablations, or any grid of stage-one settings: each point an
    ordinary run folder runs/sweep-NAME/POINT/ made by trainstage1.py, then measured by knn.py
    and a linear trainstage2.py; sweep.csv and sweep.png beside them. Run the same command again
    and finished points are skipped."""

    preset: str = optional_positional("an ablation of the paper", tuple(ablations.PRESETS))
    grid: list = listed(
        "stage-one flags, KEY=V1,V2 each (augment=crop,crop+color): every combination a point",
        shown="the preset's",
    )
    set: list = listed("stage-one flags for every point, KEY=VALUE each, over the scale's")
    scale: str = setting(
        "cpu",
        "every point's stage-one flags before --set and its own: "
        + "; ".join(
            f"{scale}: "
            + " ".join(f"--{key.replace('_', '-')} {value}" for key, value in flags.items())
            for scale, flags in ablations.SCALES.items()
        )
        + " (docs/sweeps.md)",
        choices=tuple(ablations.SCALES),
    )
    name: str = setting(
        "", "the sweep's name: its folder is runs/sweep-NAME", shown="the preset's",
        folder_name=True,
    )  # fmt: skip
    dataset: str = setting("cifar10", "stage one's --dataset", choices=DATASETS)
    data_dir: str = setting("./dataset", "stage one's --data-dir", path=True)
    linear_epochs: typing.Optional[int] = setting(
        None,
        "epochs of each point's linear evaluation",
        at_least=(1, "train for at least one epoch"),
        shown=f"linear's {LINEAR_EPOCHS}",
    )
    seeds: int = setting(
        1,
        "runs of every point, at seeds --seed, --seed + 1, ...; sweep.csv: mean and standard error",
        at_least=(1, "run each point at least once"),
    )
    validation_fraction: float = setting(
        0.1,
        "fraction of each class's training images each probe holds out, to rank by; 0: no ranking",
        at_least=(0, "0 holds none out"),
        at_most=(0.5, "hold out at most half of each class"),
    )
    launcher: str = setting(
        "local",
        "local: the points in turn on this machine (one per GPU); slurm: a SLURM job per point",
        choices=("local", "slurm"),
    )
    partition: str = setting("", "slurm: the partition the jobs go to", shown="the cluster's")
    gpus_per_point: int = setting(
        1,
        "slurm: GPUs of each point's job; more than 1 runs stage one under torchrun",
        at_least=(0, "0 runs the points on CPUs"),
    )
    cpus_per_gpu: int = setting(
        CPUS_PER_GPU, "slurm: CPUs per GPU of each job", at_least=(1, "at least one CPU")
    )
    slurm_time: int = setting(
        SLURM_TIME_MINUTES,
        "slurm: each job's time limit in minutes; a point stopped by it continues with --resume",
        at_least=(1, "at least a minute"),
    )
    dry_run: bool = setting(
        False, "print what each point would run (slurm: its job's sbatch lines) and run nothing"
    )
    resume: bool = setting(False, "continue the points that were stopped (trainstage1.py --resume)")
    device: str = device_setting()
