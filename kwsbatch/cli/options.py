"""Flags declared once: built from the *Config fields (settings.py), and the groups commands share."""

from __future__ import annotations

import argparse
import dataclasses

SHORT_FLAGS = {"jobs": ("-j",)}
_FIELD_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and each option's default after its help, unless the help says it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not action.option_strings or "default" in text or unset:
            return text
        return f"{text} (default: %(default)s)"


def add_settings(p, config_class, *, exclude: tuple[str, ...] = (), helps: dict[str, str] | None = None) -> None:
    """A flag for each field of config_class declared with settings.setting(): --name-with-dashes, with the
    field's default, type, help (unless helps words it for this command), choices and limits, so that the
    command line restates none of them."""
    for f in dataclasses.fields(config_class):
        if "help" not in f.metadata or f.name in exclude:
            continue
        flags = [*SHORT_FLAGS.get(f.name, ()), "--" + f.name.replace("_", "-")]
        kind = _FIELD_TYPES[f.type.split(" | ")[0]]
        text = (helps or {}).get(f.name, f.metadata["help"])
        if kind is bool:
            p.add_argument(*flags, action="store_true", default=f.default, help=text)
        else:
            p.add_argument(*flags, type=_checked(f, kind), default=f.default, choices=f.metadata["choices"],
                           metavar=f.metadata["metavar"], help=text)


def _checked(f: dataclasses.Field, kind: type):
    """The argparse type of a setting: kind, within the field's limits (its choices are argparse's to check)."""
    from kwsbatch.settings import SettingError, check_value

    limits = {k: v for k, v in f.metadata.items() if k != "choices"}

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        try:
            check_value(f.name, limits, value)
        except SettingError as e:
            raise argparse.ArgumentTypeError(e.reason) from None
        return value

    parse.__name__ = kind.__name__  # argparse names it in messages
    return parse


def settings_from(args: argparse.Namespace, config_class, **given):
    """config_class from the flags add_settings made for it, plus given (fields without a flag).

    A value the config refuses (limits that span fields) is a usage error naming the flag.
    """
    names = [f.name for f in dataclasses.fields(config_class) if "help" in f.metadata and hasattr(args, f.name)]
    try:
        return config_class(**{name: getattr(args, name) for name in names}, **given)
    except ValueError as e:
        args.parser.error(flag_message(e))


def flag_message(error: ValueError) -> str:
    """A config's ValueError as a usage error: a SettingError names its field, and so the flag."""
    from kwsbatch.settings import SettingError

    if isinstance(error, SettingError):
        return f"argument --{error.name.replace('_', '-')}: {error.reason}"
    return str(error)


def add_common(p: argparse.ArgumentParser) -> None:
    """What every command takes: how much it says, and where its record goes."""
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--log", default=None, metavar="FILE",
                   help="append warnings, errors and label's summary to FILE, with timestamps (default: none)")


def add_manifest_format(p: argparse.ArgumentParser) -> None:
    from kwsbatch.files.dialects import MANIFEST_FORMATS  # light: no torch

    p.add_argument("--manifest-format", choices=MANIFEST_FORMATS, default=None,
                   help="how to read manifests (default: from the file name: .csv, .tsv, .jsonl/.json, metadata.csv)")


def add_output_format(p: argparse.ArgumentParser) -> None:
    from kwsbatch.files.output import OUTPUT_FORMATS

    p.add_argument("--output-format", choices=OUTPUT_FORMATS, default=None,
                   help="format of the rows written (default: from the -o extension, else csv)")


def add_model(p: argparse.ArgumentParser, *, batches: bool = True) -> None:
    """--model and --device; with batches, label's --batch-size and -j/--jobs too (LabelConfig's)."""
    from kwsbatch.label.config import LabelConfig

    p.add_argument("--model", default=None, metavar="CKPT", help="checkpoint (default: the bundled model)")
    add_device(p)
    if batches:
        add_settings(p, LabelConfig, exclude=("max_seconds",))


def add_device(p: argparse.ArgumentParser) -> None:
    from kwsbatch.label.config import DEVICES, LabelRequest

    p.add_argument("--device", default=LabelRequest.device, choices=DEVICES, help="where features and the model run")


def add_jobs(p: argparse.ArgumentParser, *, help: str | None = None) -> None:
    """-j/--jobs alone, for commands without a model: the same field as everywhere, its help worded for the command if given."""
    from kwsbatch.label.config import LabelConfig

    add_settings(p, LabelConfig, exclude=("batch_size", "max_seconds"), helps={"jobs": help} if help else None)


def numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def percent(text: str) -> float:
    if text == "all":
        return float("inf")
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None


def reporter(args, unit: str = "files"):
    from kwsbatch.progress import RichReporter

    made = RichReporter(unit=unit, quiet=args.quiet)
    made.log_file = args.log
    return made
