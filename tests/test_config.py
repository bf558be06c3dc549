"""Every field of every stage can be set from the command line; bad flags exit with one line."""

import dataclasses
import typing

import pytest
import torch

import config

STAGES = [config.Pretrain, config.LinearEval, config.Predict, config.Plots]


def other_value(cls, field):
    """A command-line value for the field that differs from its default, and the parsed result."""
    kind = typing.get_type_hints(cls)[field.name]
    if field.name in config.CHOICES:
        value = next(choice for choice in config.CHOICES[field.name] if choice != field.default)
        return [value], value
    if kind is bool:
        return [], not field.default
    if kind in (int, float, typing.Optional[float]):
        value = (field.default or 1) * 3
        return [str(value)], value
    return ["some/other/path"], "some/other/path"


@pytest.mark.parametrize("cls", STAGES)
def test_every_field_can_be_overridden_on_the_command_line(cls):
    for field in dataclasses.fields(cls):
        if field.metadata.get("positional"):
            continue
        arguments, expected = other_value(cls, field)
        flag = "--" + field.name.replace("_", "-")
        if arguments == [] and field.default:
            flag = "--no-" + field.name.replace("_", "-")
        argv = [flag, *arguments] + (["image.png"] if cls is config.Predict else [])
        assert getattr(config.parse(cls, argv), field.name) == expected, field.name


def test_help_lists_every_field_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.parse(config.Pretrain, ["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(config.Pretrain):
        assert "--" + field.name.replace("_", "-") in text
        assert f"(default: {field.default})" in text
    assert "NT-Xent tau" in text  # the comment beside the field became its help


def test_paper_defaults():
    cfg = config.Pretrain()
    assert (cfg.arch, cfg.batch_size, cfg.epochs, cfg.temperature) == ("resnet50", 512, 100, 0.5)
    assert (cfg.optimizer, cfg.warmup_epochs, cfg.weight_decay, cfg.blur) == (
        "lars",
        10,
        1e-6,
        False,
    )
    stage2 = config.LinearEval()
    assert (stage2.lr, stage2.batch_size, stage2.epochs, stage2.weight_decay) == (
        0.1,
        512,
        100,
        0.0,
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "1"], "--batch-size 1 is too small"),
        (["--epochs", "0"], "--epochs 0 is too small"),
        (["--lr", "0"], "--lr 0.0 is too small"),
        (["--arch", "resnet51"], "invalid choice: 'resnet51'"),
        (["--bacth-size", "64"], "unrecognized arguments: --bacth-size"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.parse(config.Pretrain, argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


def test_device_choice():
    assert config.pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert config.pick_device().type == expected
    assert config.autocast_dtype("fp32", torch.device("cpu")) is None
    assert config.autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
