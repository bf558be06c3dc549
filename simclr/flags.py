"""The command line made from a script's settings dataclass (config.py): a field declared with
setting() is a flag with its default, its --help text, the values it allows, whether it changes
the numbers a run reports and where it is read; parse() reads the flags into the dataclass and
refuses a bad one in one line."""

import argparse
import dataclasses
import typing

from simclr import rundir
from simclr.errors import UsageError


def setting(
    default,
    help,
    *,
    choices=None,
    at_least=None,
    at_most=None,
    shown=None,
    numbers=True,
    only=None,
    path=False,
    folder_name=False,
):
    """A field with its --help text; choices: the allowed values; at_least, at_most: (smallest or
    largest allowed value, why); shown: how --help words a default that is a placeholder (None,
    empty). What makes a result (simclr/provenance.py) reads the rest: numbers False: it changes
    where and how fast a run goes, never its numbers; only: {field: values} where it is read, so
    that a value other than its default elsewhere is refused; path: a file or folder, compared
    made absolute; folder_name: one plain name of a folder in the run folder."""
    metadata = {"help": help, "choices": choices, "shown": shown}
    metadata |= {"at_least": at_least, "at_most": at_most, "numbers": numbers, "only": only}
    metadata |= {"path": path, "folder_name": folder_name}
    return dataclasses.field(default=default, metadata=metadata)


def positional(help):
    """A field given on the command line without a flag (test.py's image paths)."""
    return dataclasses.field(default_factory=list, metadata={"positional": True, "help": help})


def optional_positional(help, choices):
    """One value given without a flag, or none (sweep.py's preset)."""
    metadata = {"positional": True, "optional": True, "help": help, "choices": choices}
    return dataclasses.field(default="", metadata=metadata)


def listed(help, shown="none"):
    """A flag that takes several values: --grid KEY=VALUES KEY=VALUES."""
    metadata = {"help": help, "choices": None, "at_least": None, "shown": shown}
    return dataclasses.field(default_factory=list, metadata=metadata)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, as an exception, instead of the whole usage
    block and an exit: the script's main turns it into the line and exit status 2."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see --help)")


def help_text(field):
    """The field's help with its default; '%' doubled, as argparse formats help with it."""
    shown = field.metadata["shown"] or field.default
    return f"{field.metadata['help']} (default: {shown})".replace("%", "%%")


def add_flag(parser, field, kind):
    if field.metadata.get("positional") and field.metadata.get("optional"):
        choices = field.metadata["choices"]
        shown = f"{field.metadata['help']}: {', '.join(choices)}"
        parser.add_argument(field.name, nargs="?", default=field.default, help=shown)
        return
    if field.metadata.get("positional"):
        parser.add_argument(field.name, nargs="+", help=field.metadata["help"])
        return
    flag = "--" + field.name.replace("_", "-")
    if kind is list:  # given twice, the values add up: --set a=1 --set b=2 is --set a=1 b=2
        parser.add_argument(flag, nargs="+", action="extend", default=[], help=help_text(field))
        return
    if kind is bool:
        action = argparse.BooleanOptionalAction
        parser.add_argument(flag, action=action, default=field.default, help=help_text(field))
        return
    value_type = typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Union else kind
    # an empty default ("as stage one had it") is not a choice: argparse checks only given values
    parser.add_argument(
        flag,
        type=value_type,
        default=field.default,
        choices=field.metadata["choices"],
        help=help_text(field),
    )


def parse(cls, argv=None, description=None):
    """Build an argparse parser from the dataclass fields and return the filled-in dataclass;
    description: the --help text above the flags (default: the dataclass's docstring).

    A bad value raises UsageError naming the flag, before anything is written."""
    parser = OneLineErrorParser(
        description=description or cls.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --epoch 2 is a typo, not --epochs 2
    )
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        add_flag(parser, field, hints[field.name])
    cfg = cls(**vars(parser.parse_args(argv)))
    for field in dataclasses.fields(cls):
        value, flag = getattr(cfg, field.name), "--" + field.name.replace("_", "-")
        low, high = field.metadata.get("at_least"), field.metadata.get("at_most")
        if low and value is not None and value < low[0]:
            parser.error(f"{flag} {value} is too small: {low[1]}")
        if high and value is not None and value > high[0]:
            parser.error(f"{flag} {value} is too large: {high[1]}")
        if field.metadata.get("folder_name") and value:
            problem = rundir.folder_name_problem(value)
            if problem:
                parser.error(f"{flag} {value} {problem}")
        unread = unread_because(cfg, field)
        if unread:
            parser.error(f"{as_typed(field, value)} is read {unread} only: leave it out")
    return cfg


def as_typed(field, value):
    """A setting as typed: --no-feature-norm, --augmented-passes 2."""
    flag = field.name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{flag}"
    return f"--{flag} {value}"


def read_where(cfg, field):
    """Whether cfg reads the field: its only's conditions hold (always, without one)."""
    only = field.metadata.get("only") or {}
    return all(getattr(cfg, name) in values for name, values in only.items())


def unread_because(cfg, field):
    """'' where cfg reads the field or leaves it at its default, else where it is read, in words:
    'with --mode linear and --protocol cached'."""
    if read_where(cfg, field) or getattr(cfg, field.name) == field.default:
        return ""
    conditions = [
        f"without --{name.replace('_', '-')}"
        if values == (None,)
        else f"with --{name.replace('_', '-')} {' or '.join(map(str, values))}"
        for name, values in field.metadata["only"].items()
    ]
    return " and ".join(conditions)
