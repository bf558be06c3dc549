"""Every field of every stage can be set from the command line, every flag says what it does, and
bad flags raise one line."""

import dataclasses
import os
import typing

import pytest
import torch

import config
from simclr import errors
from simclr import resume
from simclr import runtime
from conftest import load_script

SCRIPT_CONFIGS = {
    "trainstage1": config.Pretrain, "trainstage2": config.Evaluate, "test": config.Predict,
    "visualization": config.Plots, "confusionMatrix": config.Plots, "export": config.Export,
    "knn": config.Knn, "pictures": config.Pictures, "sweep": config.Sweep, "check": config.Check,
    "reproduce": config.Reproduce,
}  # fmt: skip
STAGES = list(dict.fromkeys(SCRIPT_CONFIGS.values()))
# what the scripts with a positional argument are given
POSITIONAL = {config.Predict: ["image.png"], config.Check: ["card.json"]}
POSITIONAL[config.Reproduce] = ["receipt.json"]
SCRIPTS = list(SCRIPT_CONFIGS)


def other_value(cls, field):
    """A command-line value for the field that differs from its default, and the parsed result."""
    kind = typing.get_type_hints(cls)[field.name]
    if field.metadata["choices"]:
        value = next(choice for choice in field.metadata["choices"] if choice != field.default)
        return [value], value
    if kind is bool:
        return [], not field.default
    if kind is list:
        return ["epochs=2", "seed=1"], ["epochs=2", "seed=1"]
    if kind in (int, float, typing.Optional[int], typing.Optional[float]):
        value = (field.default or (field.metadata["at_least"] or [1])[0] or 1) * 3
        if field.metadata["at_most"]:
            value = min(value, field.metadata["at_most"][0])
        return [str(value)], value
    if field.metadata.get("folder_name"):
        return ["another-name"], "another-name"
    return ["some/other/path"], "some/other/path"


def where_read(cls, field):
    """The flags that make a field read, where config.py says it is read only with them."""
    defaults = {other.name: other.default for other in dataclasses.fields(cls)}
    return [
        word
        for name, values in (field.metadata.get("only") or {}).items()
        if defaults[name] not in values
        for word in ("--" + name.replace("_", "-"), str(values[0]))
    ]


@pytest.mark.parametrize("cls", STAGES)
def test_every_field_can_be_overridden_on_the_command_line(cls):
    for field in dataclasses.fields(cls):
        if field.metadata.get("positional"):
            continue
        arguments, expected = other_value(cls, field)
        flag = "--" + field.name.replace("_", "-")
        if arguments == [] and field.default:
            flag = "--no-" + field.name.replace("_", "-")
        argv = [flag, *arguments, *where_read(cls, field)]
        argv += POSITIONAL.get(cls, [])
        assert getattr(config.parse(cls, argv), field.name) == expected, field.name


def help_entries(script, capsys):
    """{flag: its help text} as `python SCRIPT.py --help` prints it."""
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    options = text[text.index("options:") :].splitlines()[1:]
    entries, flag = {}, None
    for line in options:
        stripped = line.strip()
        if line.startswith("  --"):  # an option; its help's continuation lines are indented more
            flag, _, rest = stripped.partition("  ")
            flag = flag.split()[0].split(",")[0]
            entries[flag] = rest.strip()
        elif flag:
            entries[flag] += " " + stripped
    return {flag: " ".join(text.split()) for flag, text in entries.items()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_of_every_script_has_help_and_its_default(script, capsys):
    cls = SCRIPT_CONFIGS[script]
    entries = help_entries(script, capsys)
    for field in dataclasses.fields(cls):
        if field.metadata.get("positional"):
            continue
        text = " ".join(entries["--" + field.name.replace("_", "-")].split())
        assert text and not text.startswith("(default"), (field.name, text)
        shown = field.metadata["shown"] or field.default
        assert text.endswith(f"(default: {shown})"), (field.name, text)
        assert "None" not in text, (field.name, text)
    assert set(entries) - {"--help"} == {
        "--" + field.name.replace("_", "-")
        for field in dataclasses.fields(cls)
        if not field.metadata.get("positional")
    }


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_no_empty_choice(script, capsys):
    """An empty default ("as stage one had it") is not offered as a choice: `{,cifar10,...}`."""
    with pytest.raises(SystemExit):
        load_script(script).main(["--help"])
    text = capsys.readouterr().out
    assert "{," not in text and ",}" not in text and ",," not in text


def test_help_text_comes_from_beside_the_field(capsys):
    entries = help_entries("trainstage1", capsys)
    assert entries["--temperature"].startswith("NT-Xent tau (default: 0.5)")
    assert "workers" in entries["--data-path"]  # a field whose help once went missing
    assert "at most 10%" in entries["--warmup-epochs"]


def test_workers_default_to_the_cpus_this_process_may_use_in_every_script(monkeypatch):
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(3)))
    assert config.workers_setting().default == 3  # no more workers than CPUs: torch warns
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert config.workers_setting().default == config.MAX_DEFAULT_WORKERS
    for cls in SCRIPT_CONFIGS.values():
        if "workers" in {field.name for field in dataclasses.fields(cls)}:
            assert cls().workers == min(cpus, config.MAX_DEFAULT_WORKERS), cls


def test_a_resumed_run_reads_with_this_machines_workers_not_the_saved_ones():
    saved = dataclasses.asdict(config.Pretrain(workers=64, epochs=3))
    on_this_machine = resume.settings_to_continue(config.Pretrain(run_dir="r", resume=True), saved)
    assert on_this_machine.workers == config.Pretrain().workers and on_this_machine.epochs == 3
    given = resume.settings_to_continue(config.Pretrain(workers=0, resume=True), saved)
    assert given.workers == 0


def test_paper_defaults():
    cfg = config.Pretrain()
    assert (cfg.arch, cfg.batch_size, cfg.epochs, cfg.temperature) == ("resnet50", 512, 100, 0.5)
    assert (cfg.optimizer, cfg.weight_decay, cfg.blur) == ("lars", 1e-6, False)
    assert (config.WARMUP_EPOCHS, cfg.warmup_epochs) == (10, None)
    stage2 = config.Evaluate()
    assert (stage2.mode, stage2.batch_size, stage2.weight_decay) == ("linear", 512, None)
    # lr, weight decay and epochs depend on the mode (config.with_stage_two_schedule;
    # tests/test_few_labels.py): the paper's for linear and finetune, scratch's chosen on held-out
    # labels (bench/scratch_recipe.py), distill's fine-tuning's
    modes = config.STAGE_TWO_MODES
    assert {name: mode.lr for name, mode in modes.items()} == {
        "linear": 0.1, "finetune": 0.05, "scratch": 0.1, "distill": 0.05
    }  # fmt: skip
    decays = {"linear": 0.0, "finetune": 0.0, "scratch": 5e-4, "distill": 0.0}
    assert {name: mode.weight_decay for name, mode in modes.items()} == decays
    assert config.LINEAR_EPOCHS == 100
    assert (config.FINETUNE_EPOCHS_AT_1_PERCENT, config.FINETUNE_EPOCHS_ABOVE) == (60, 30)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "1"], "--batch-size 1 is too small"),
        (["--epochs", "0"], "--epochs 0 is too small"),
        (["--lr", "0"], "--lr 0.0 is too small"),
        (["--warmup-epochs", "-1"], "--warmup-epochs -1.0 is too small"),
        (["--arch", "resnet51"], "invalid choice: 'resnet51'"),
        (["--bacth-size", "64"], "unrecognized arguments: --bacth-size"),
        (["--epoch", "2"], "unrecognized arguments: --epoch 2"),  # no abbreviation of --epochs
    ],
)
def test_bad_flags_raise_a_usage_error_of_one_line(argv, message):
    with pytest.raises(errors.UsageError) as raised:
        config.parse(config.Pretrain, argv)
    line = raised.value.line()
    assert "\n" not in line and message in line and line.endswith("(see --help)")


@pytest.mark.parametrize(
    "settings",
    [config.Pretrain, config.Evaluate, config.Knn, config.Pictures, config.Predict]
    + [config.Export, config.Plots, config.Sweep, config.Check, config.Reproduce],
)
def test_no_script_takes_an_abbreviated_flag(settings):
    """Abbreviations would take --epoch for --epochs, and a later flag could make one ambiguous."""
    field = next(
        field
        for field in dataclasses.fields(settings)
        if field.type in (int, str) and "positional" not in field.metadata
        and not field.metadata["choices"] and not field.metadata.get("folder_name")
    )  # fmt: skip
    positional = POSITIONAL.get(settings, [])
    flag, image = "--" + field.name.replace("_", "-"), positional
    assert config.parse(settings, [*image, flag, "1"])
    with pytest.raises(errors.UsageError, match=f"unrecognized arguments: {flag[:-1]}"):
        config.parse(settings, [*image, flag[:-1], "1"])


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bad_flag_ends_every_script_with_one_line_and_exit_2(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        positional = POSITIONAL.get(SCRIPT_CONFIGS[script], [])
        load_script(script).main([*positional, "--no-such-flag"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert (
        captured.err.strip().splitlines() == [captured.err.strip()]
        and "unrecognized arguments: --no-such-flag" in captured.err
    )


@pytest.mark.parametrize(
    "cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_auto_device_prefers_cuda_then_mps_then_cpu_and_a_named_device_wins(
    cuda, mps, expected, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert runtime.pick_device() == torch.device(expected)
    assert runtime.pick_device("auto") == torch.device(expected)
    assert runtime.pick_device("cpu") == torch.device("cpu")
    assert runtime.autocast_dtype("fp32", torch.device("cpu")) is None


@pytest.mark.parametrize("native", [True, False])
def test_half_precision_on_a_cpu_only_where_it_is_native(native, monkeypatch, capsys):
    monkeypatch.setattr(runtime, "cpu_has_fast_half_precision", lambda dtype: native)
    cpu = torch.device("cpu")
    assert runtime.autocast_dtype("bf16", cpu) is (torch.bfloat16 if native else None)
    assert runtime.autocast_dtype("fp16", cpu) is (torch.float16 if native else None)
    assert ("this CPU has no native bf16" in capsys.readouterr().out) is not native
