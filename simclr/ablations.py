"""The paper's ablations as data, written once: each preset's grid of stage-one settings, how
sweep.png draws it and what the paper reports, and the stage-one settings of each --scale.
sweep.py runs them (simclr/sweeps.py); config.py names them in --help."""

import dataclasses
import itertools

# Stage-one settings of each --scale. cpu: a first look; the head preset took 48 minutes on a
# 2-core AMD EPYC (BENCHMARKS.md, "The head ablation as a sweep"); paper: the paper's CIFAR-10 sizes.
SCALES = {
    "cpu": {"arch": "resnet18", "subset": "2000", "epochs": "15", "batch_size": "128"},
    "paper": {"arch": "resnet50", "subset": "0", "epochs": "1000", "batch_size": "1024"},
}


@dataclasses.dataclass(frozen=True)
class Preset:
    """One of the paper's ablations: its grids (a list of {flag: values}, the points being the
    union of their products; by scale where the values depend on it), how sweep.png draws it,
    which features each point is measured on, and what the paper reports."""

    grids: dict  # scale, or "any" -> list of {field name: [values as typed on the command line]}
    figure: str  # lines (over the first key), bars (groups of the first key), matrix (op pairs)
    features: tuple = ("h",)
    paper_label: str = ""  # what the paper's numbers are, named where they come from
    paper: dict = dataclasses.field(default_factory=dict)  # point name -> the paper's top-1 (%)
    finding: str = ""  # the paper's finding in words, where it gives no numbers to draw


PAIR_OPS = ("crop", "color", "gray", "blur")  # the ops of the augmentation matrix (Figure 5)
PRESETS = {
    "temperature": Preset(
        {"any": [{"temperature": ["0.05", "0.1", "0.5", "1"]}]},
        "lines",
        paper_label="paper, ImageNet ResNet-50, 100 epochs (Table 5)",
        paper={
            "temperature-0.05": 59.7,
            "temperature-0.1": 64.4,
            "temperature-0.5": 60.7,
            "temperature-1": 58.0,
        },
    ),
    "batch-epochs": Preset(
        {
            "cpu": [{"batch_size": ["64", "128", "256"], "epochs": ["5", "10", "20"]}],
            "paper": [
                {
                    "batch_size": ["256", "512", "1024", "2048", "4096"],
                    "epochs": ["100", "200", "400", "800"],
                }
            ],
        },
        "bars",
        finding="paper (Figure B.7, CIFAR-10): larger batches help most at few epochs",
    ),
    "color": Preset(
        {
            "any": [
                {"color_strength": ["0.125", "0.25", "0.5", "1"]},
                {"color_strength": ["1"], "blur": ["true"]},
            ]
        },
        "lines",
        paper_label="paper, ImageNet ResNet-50 (Table 1)",
        paper={
            "color-strength-0.125": 59.6,
            "color-strength-0.25": 61.0,
            "color-strength-0.5": 62.6,
            "color-strength-1": 63.2,
            "color-strength-1_blur-true": 64.5,
        },
    ),
    "head": Preset(
        {"any": [{"head": ["none", "linear", "mlp"]}]},
        "bars",
        features=("h", "z"),
        finding="paper (Figure 8, ImageNet): mlp beats linear by 3% and none by over 10%; "
        "h beats z by over 10%",
    ),
    "augment-pairs": Preset(
        {
            "any": [
                {
                    "augment": [*PAIR_OPS, *map("+".join, itertools.combinations(PAIR_OPS, 2))],
                    "one_branch": ["true"],
                }
            ]
        },
        "matrix",
        finding="paper (Figure 5, ImageNet, one branch transformed): crop with colour is the "
        "strongest pair",
    ),
}
