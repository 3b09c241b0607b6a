"""The command line: parse flags, make one library call, turn KwsError into one `error:` line.

Exit codes (documented in docs/commands.md, "Exit status"):
  0  success
  1  error: nothing (more) was done; the message says why
  2  usage error (bad flags)
  3  finished, with problems: some files could not be read (their rows carry the error),
     evaluate's accuracy is below --min-accuracy, or merge found missing or duplicated files
  75 label: another run holds the output's lock; nothing was done (EX_TEMPFAIL: try again later)
  130 interrupted (Ctrl-C)
  143 terminated (SIGTERM, what cron and systemd timeouts send): stopped as Ctrl-C stops
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

import kwsbatch.cli.commands as commands
import kwsbatch.cli.corpus as corpus
import kwsbatch.cli.tools as tools
from kwsbatch.cli.exit import exit_now
from kwsbatch.cli.options import HelpFormatter, add_common, settings_from

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_LOCKED, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 75, 130, 143

# name: (summary, module, examples); the module has add_<name>(parser) and run_<name>(args).
COMMANDS = {
    "train": ("train a keyword model on a labelled manifest", commands, commands.TRAIN_EXAMPLES),
    "label": ("label audio files, folders or manifests", commands, commands.LABEL_EXAMPLES),
    "evaluate": ("score a model on a labelled manifest", commands, commands.EVALUATE_EXAMPLES),
    "synth": ("make a labelled keyword corpus with text-to-speech", corpus, corpus.SYNTH_EXAMPLES),
    "manifest": ("train/val/test manifests from a Speech Commands-like folder tree", corpus, corpus.MANIFEST_EXAMPLES),
    "check": ("audit a corpus before training or labelling", corpus, corpus.CHECK_EXAMPLES),
    "fetch": ("download a public data set and write its manifests", corpus, corpus.FETCH_EXAMPLES),
    "bench": ("measure label's and train's throughput against the floors and the notebook's way", tools, tools.BENCH_EXAMPLES),
    "export": ("write a model that runs without kwsbatch (ONNX, TorchScript)", tools, tools.EXPORT_EXAMPLES),
    "info": ("show what a checkpoint is: classes, settings, size, provenance", tools, tools.INFO_EXAMPLES),
    "merge": ("join the outputs of a sharded label run (label --shard K/N)", commands, commands.MERGE_EXAMPLES),
}
__all__ = ["COMMANDS", "build_parser", "entry", "main", "settings_from"]


def entry() -> NoReturn:
    """The `kwsbatch` program (console script and `python -m kwsbatch`): main(), then the process ends
    without the interpreter's teardown (exit.py)."""
    exit_now(main())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    parser = build_parser(command, flags=command is not None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from kwsbatch.allocator import keep_freed_memory
    from kwsbatch.errors import KwsError
    from kwsbatch.files.lock import LockedError
    from kwsbatch.sigterm import Terminated, stop_on_sigterm

    keep_freed_memory()
    try:
        with stop_on_sigterm():
            return args.run(args)
    except LockedError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except KwsError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Terminated as e:
        print(str(e) or "terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt as e:
        print(str(e) or "interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of standard output went away (`kwsbatch label DIR | head`): stop quietly,
        # and keep Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


def build_parser(command: str | None = None, *, flags: bool = True) -> argparse.ArgumentParser:
    """The parser of every command; with command, only that one's flags are built, and with flags=False
    none, as `kwsbatch --help` needs: building some (train's read their defaults from the model's
    configs) imports torch, which takes seconds."""
    from kwsbatch import __version__

    parser = argparse.ArgumentParser(prog="kwsbatch", description="Tag audio corpora with spoken keywords, in batch.")
    parser.add_argument("--version", action="version", version=f"kwsbatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (summary, module, examples) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".", epilog=examples,
                           formatter_class=HelpFormatter)
        if flags and command in (None, name):
            add_common(p)
            getattr(module, f"add_{name}")(p)
            p.set_defaults(run=getattr(module, f"run_{name}"), parser=p)
    return parser


def _command(argv: list[str]) -> str | None:
    """The command argv names: its first word that is not an option (kwsbatch's own options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)
