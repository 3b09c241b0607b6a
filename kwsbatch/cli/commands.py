"""The commands of the model's life: train, label, evaluate, and merge (label's shards into one output).

Each command is a pair: add_<command>(parser) declares its flags, run_<command>(args) makes one
library call and prints what the user needs; errors travel up to main as KwsError.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from kwsbatch.cli.options import (
    add_device,
    add_manifest_format,
    add_model,
    add_output_format,
    add_settings,
    numbers,
    reporter,
    settings_from,
)

EXIT_OK, EXIT_PARTIAL = 0, 3

TRAIN_EXAMPLES = """examples:
  kwsbatch train data/train.csv --val data/val.csv -o runs/kws
  kwsbatch train speech_commands/ -o runs/sc              # a folder-per-label tree; its split lists are honoured
  kwsbatch train synth/train.csv mine/train.csv:4 --val mine/val.csv   # each of mine drawn 4x as often
  kwsbatch train data/train.csv --epochs 10 --hidden 32 --augment light --noise-dir noise/
  kwsbatch train data/train.csv -o runs/kws --resume
  kwsbatch train mine/train.csv --init runs/kws/best.pt -o runs/mine   # adapt every layer to your recordings
  kwsbatch train data/new-words.csv --finetune runs/kws/best.pt -o runs/kws-ft
  torchrun --nproc-per-node 4 -m kwsbatch train data/train.csv --device cuda
"""


def add_train(p: argparse.ArgumentParser) -> None:
    from kwsbatch.model.config import ArchitectureConfig, FeatureConfig
    from kwsbatch.train.config import TrainConfig

    p.add_argument("manifests", nargs="+", type=_train_source, metavar="MANIFEST[:WEIGHT]",
                   help="manifests with path and label columns (CSV, TSV, JSON lines, audiofolder metadata.csv) or folder-per-label "
                   "trees (training: their clips in neither split list); ':WEIGHT' draws each of its clips WEIGHT times as often "
                   "as a weight-1 clip (default 1)")
    p.add_argument("--val", action="append", help="validation manifest or tree, repeatable "
                   "(default: a tree's validation_list.txt, else a held-out slice of each train manifest)")
    add_manifest_format(p)
    p.add_argument("-o", "--out", default=None, help="run folder for best.pt, last.pt, history.csv (default: runs/<first manifest's name>)")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    run.add_argument("--force", action="store_true", help="train into a run folder that is not empty, replacing its best.pt, last.pt and history.csv")
    add_device(p)
    add_settings(p.add_argument_group("training"), TrainConfig)
    add_settings(p.add_argument_group("model"), ArchitectureConfig)
    add_settings(p.add_argument_group("features"), FeatureConfig)
    _add_augment_flags(p)


def _add_augment_flags(p: argparse.ArgumentParser) -> None:
    from kwsbatch.train.config import AUGMENT_PRESETS, CODECS, DEFAULT_CODECS, DEFAULT_ROOMS, ROOM_MODELS

    g = p.add_argument_group(
        "augmentation", "each transform: a probability per clip, then its range; numbers left out keep the preset's"
    )
    g.add_argument("--augment", choices=AUGMENT_PRESETS,
                   help="preset (default: standard, with background noise when the manifest's folder has _background_noise_/)")
    for flag, metavar, what in (
        ("--time-shift", "P,MAX_S", "move the clip up to MAX_S seconds either way"),
        ("--zero-pad", "P,MAX_S", "add up to MAX_S seconds of silence at each end"),
        ("--amplify", "P,MIN_DB,MAX_DB", "gain in decibels"),
        ("--speed", "P,MIN,MAX", "play speed factor (pitch moves too)"),
        ("--pitch", "P,MIN_SEMITONES,MAX_SEMITONES", "pitch shift at the same duration"),
        ("--vtlp", "P,MIN_ALPHA,MAX_ALPHA", "vocal tract length: move the formants by a factor"),
        ("--reverb", "P,MIN_RT60_S,MAX_RT60_S", "a simulated room's reverberation (see --rooms)"),
        ("--eq", "P,MAX_DB", "a smooth random EQ curve within +-MAX_DB"),
        ("--band-limit", "P,MIN_HP,MAX_HP,MIN_LP,MAX_LP", "a microphone's high-pass and low-pass cutoffs in Hz"),
        ("--telephone", "P", "the 300-3400 Hz band of a phone call"),
        ("--noise", "P,MIN_SNR_DB,MAX_SNR_DB", "background noise at a signal-to-noise ratio"),
        ("--codec", "P,MIN_LEVEL,MAX_LEVEL", "a lossy codec round trip (--codecs) at a compression level, 1 = lowest bitrate"),
        ("--time-mask", "P,MAX_FRAMES,COUNT", "zero COUNT runs of up to MAX_FRAMES feature frames"),
        ("--freq-mask", "P,MAX_COEFFS,COUNT", "zero COUNT bands of up to MAX_COEFFS coefficients"),
    ):
        g.add_argument(flag, type=numbers, metavar=metavar, help=f"{what} (default: the preset's)")
    g.add_argument("--noise-dir", help="--noise's recordings: a folder of audio, or a manifest's _silence_ rows "
                   "(default: _background_noise_/ beside the first train manifest, or in its tree)")
    g.add_argument("--rooms", choices=ROOM_MODELS, help=f"room model for --reverb (default: {DEFAULT_ROOMS}; shoebox needs the augment extra)")
    g.add_argument("--codecs", metavar="NAMES", help=f"codecs for --codec, from {','.join(CODECS)} (default: {DEFAULT_CODECS})")


def _train_source(text: str):
    from kwsbatch.train.sources import parse_source

    try:
        return parse_source(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run_train(args) -> int:
    from kwsbatch.model.config import ArchitectureConfig, FeatureConfig
    from kwsbatch.train.config import TrainConfig
    from kwsbatch.train.loop import train

    config, model, features = (settings_from(args, c) for c in (TrainConfig, ArchitectureConfig, FeatureConfig))
    first = args.manifests[0].manifest
    run_dir = Path(args.out) if args.out else Path("runs") / Path(os.path.abspath(first)).stem
    result = train(
        args.manifests, run_dir, config=config, model=model, features=features, augment=_augment_config(args, first),
        val_manifest=args.val, device=args.device, resume=args.resume, force=args.force, reporter=reporter(args, unit="clips"),
        manifest_format=args.manifest_format,
    )
    if os.environ.get("RANK", "0") != "0":
        return EXIT_OK  # under torchrun: rank 0 speaks for the run
    skipped = f"; skipped {result.skipped} unreadable clips" if result.skipped else ""
    print(f"best epoch {result.best_epoch}: validation accuracy {result.best_val_accuracy:.2%}, temperature {result.temperature:.3f}; "
          f"wrote {run_dir / 'best.pt'}, {run_dir / 'last.pt'}, {run_dir / 'history.csv'}{skipped}", file=sys.stderr)
    return EXIT_OK


def _augment_config(args, train_manifest):
    """The --augment preset with the transforms' flags laid over it; None, train's own recipe, when no
    augmentation flag is given."""
    from kwsbatch.settings import SettingError
    from kwsbatch.train.augment import AugmentConfig
    from kwsbatch.train.loop import default_augmentation

    given = {name: getattr(args, name) for name in AugmentConfig.probability_fields() if getattr(args, name) is not None}
    named = {name: getattr(args, name) for name in ("noise_dir", "rooms", "codecs") if getattr(args, name) is not None}
    try:
        if args.augment is None and args.noise is None and args.noise_dir is None:
            # Noise was not asked for: the recipe's, which goes without when there is none beside the manifest.
            if not (given or named):
                return None
            return dataclasses.replace(default_augmentation(train_manifest).override(**given), **named)
        config = (AugmentConfig.preset(args.augment) if args.augment else AugmentConfig()).override(**given)
        return dataclasses.replace(config, **named)
    except SettingError as e:
        args.parser.error(f"argument --{e.name.replace('_', '-')}: {e.reason}")
    except ValueError as e:  # --rooms or --codecs
        args.parser.error(str(e))


LABEL_EXAMPLES = """examples:
  kwsbatch label clips/ -o labels.csv                  # nightly from cron: only new or changed files are labelled
  kwsbatch label data/test.csv --model runs/kws/best.pt -o labels.parquet
  kwsbatch label recordings/ --window 1 --hop 0.25 -o detections.jsonl
  kwsbatch label clips/ --shard 3/8 -o shard3.csv      # one task of an array of 8; join with kwsbatch merge
  kwsbatch label a.wav b.flac | head
"""


def add_label(p: argparse.ArgumentParser) -> None:
    from kwsbatch.label.config import LabelConfig, LabelRequest

    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders (searched recursively) or manifests")
    p.add_argument("-o", "--out", default=LabelRequest.out,
                   help="output file: .csv, .jsonl or .parquet, updated incrementally (default: CSV on standard output)")
    add_output_format(p)
    add_manifest_format(p)
    add_model(p)
    add_settings(p, LabelConfig, exclude=("batch_size", "jobs"))
    add_settings(p, LabelRequest)
    p.add_argument("--dask", default=os.environ.get("KWSBATCH_DASK"), metavar="ADDRESS",
                   help="score on a dask.distributed scheduler (tcp://host:8786), or 'local:N' for N local worker processes "
                        "(default: $KWSBATCH_DASK, else none)")


def run_label(args) -> int:
    from kwsbatch.label.config import LabelConfig, LabelRequest
    from kwsbatch.label.run import label_corpus

    request = settings_from(
        args, LabelRequest, inputs=tuple(args.inputs), out=args.out, output_format=args.output_format,
        manifest_format=args.manifest_format, model=args.model, device=args.device, dask=args.dask,
        config=settings_from(args, LabelConfig),
    )
    summary = label_corpus(request, reporter(args))
    if not args.quiet:
        print(summary.line(), file=sys.stderr)
    return EXIT_PARTIAL if summary.failed else EXIT_OK


EVALUATE_EXAMPLES = """examples:
  kwsbatch evaluate data/test.csv --model runs/kws/best.pt -o reports/kws
  kwsbatch evaluate data/test.csv --by speaker                 # per-speaker accuracy, worst first
  kwsbatch evaluate data/test.csv --predictions labels.csv     # score a label output, no model run
  kwsbatch evaluate data/test.csv --min-accuracy 0.9 -q        # exit 3 below 90%: a CI gate
  kwsbatch evaluate truth.csv --target-fa-per-hour 0.5         # long recordings: path,start_s,end_s,label
"""


def add_evaluate(p: argparse.ArgumentParser) -> None:
    from kwsbatch.evaluate.config import WakewordConfig

    p.add_argument("manifest", help="manifest with path and label columns (CSV, TSV, JSON lines, audiofolder metadata.csv) or a "
                   "folder-per-label tree (its testing_list.txt clips when it has one)")
    add_manifest_format(p)
    p.add_argument("--predictions", default=None,
                   help="score this `label` output (CSV, JSON lines, Parquet) instead of running a model (default: run the model)")
    p.add_argument("-o", "--out", default=None, help="report folder (default: reports/<manifest name>)")
    p.add_argument("--min-accuracy", type=float, default=None, metavar="A",
                   help="exit with status 3 when accuracy is below A, in 0-1 (default: no gate)")
    p.add_argument("--by", action="append", default=[], metavar="COLUMN",
                   help="also score each group of clips sharing a value of this manifest column (speaker, word, ...); repeatable")
    p.add_argument("--min-group-clips", type=int, default=10, metavar="N",
                   help="groups with fewer scored clips are marked and left out of the --by summary")
    add_model(p)
    g = p.add_argument_group("long recordings", "a manifest with start_s and end_s columns is a wake-word truth list: "
                             "one row per spoken keyword (path,start_s,end_s,label) in long recordings, scored in window mode")
    g.add_argument("--window", type=float, default=None, metavar="SECONDS", help=f"window length (default: {WakewordConfig.window:g})")
    g.add_argument("--hop", type=float, default=None, metavar="SECONDS", help="seconds between windows (default: half the window)")
    g.add_argument("--target-fa-per-hour", type=float, default=None, metavar="N",
                   help="the operating threshold is the lowest at which false accepts per hour are at most N "
                   f"(default: {WakewordConfig.target_fa_per_hour:g})")


def run_evaluate(args) -> int:
    from kwsbatch.evaluate.report import render_groups, render_report
    from kwsbatch.evaluate.run import evaluate_manifest
    from kwsbatch.evaluate.wakeword import is_event_manifest
    from kwsbatch.label.config import LabelConfig
    from kwsbatch.progress import table_console

    if args.min_group_clips < 1:
        args.parser.error(f"argument --min-group-clips: must be at least 1, got {args.min_group_clips}")
    if is_event_manifest(args.manifest, args.manifest_format):
        return _evaluate_recordings(args)
    given = [f for f, v in (("--window", args.window), ("--hop", args.hop), ("--target-fa-per-hour", args.target_fa_per_hour)) if v is not None]
    if given:
        args.parser.error(f"{', '.join(given)}: only for a truth list of long recordings (a manifest with start_s and end_s columns)")
    evaluation, groups, out_dir = evaluate_manifest(
        args.manifest, out_dir=args.out, predictions=args.predictions, model=args.model, device=args.device,
        config=settings_from(args, LabelConfig), manifest_format=args.manifest_format, reporter=reporter(args),
        by=args.by, min_group_clips=args.min_group_clips,
    )
    render_report(evaluation, table_console())
    for group_scores in groups:
        render_groups(group_scores, table_console())
    print(f"report written to {out_dir}", file=sys.stderr)
    if args.min_accuracy is not None and evaluation.accuracy < args.min_accuracy:
        print(f"accuracy {evaluation.accuracy:.2%} is below --min-accuracy {args.min_accuracy:.2%}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _evaluate_recordings(args) -> int:
    """A wake-word truth list: window mode over long recordings, detections matched in time, a threshold sweep."""
    from kwsbatch.evaluate.config import WakewordConfig
    from kwsbatch.evaluate.report import render_wakeword
    from kwsbatch.evaluate.run import evaluate_recordings
    from kwsbatch.label.config import LabelConfig
    from kwsbatch.progress import table_console

    if args.predictions or args.min_accuracy is not None or args.by:
        args.parser.error("--predictions, --min-accuracy and --by are for clip manifests; "
                          "a truth list of long recordings (start_s, end_s) is scored by running the model")
    given = {"window": args.window, "hop": args.hop, "target_fa_per_hour": args.target_fa_per_hour}
    try:
        wakeword = WakewordConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        args.parser.error(str(e))
    evaluation, out_dir = evaluate_recordings(
        args.manifest, wakeword, out_dir=args.out, model=args.model, device=args.device, config=settings_from(args, LabelConfig),
        manifest_format=args.manifest_format, reporter=reporter(args),
    )
    render_wakeword(evaluation, table_console())
    print(f"report written to {out_dir}", file=sys.stderr)
    return EXIT_OK


MERGE_EXAMPLES = """examples:
  kwsbatch merge shard*.csv -o labels.csv
  kwsbatch merge shard0.jsonl shard1.jsonl -o labels.parquet --inputs clips/   # also report files no shard labelled
"""


def add_merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", nargs="+", metavar="SHARD", help="label outputs (.csv, .jsonl, .parquet), merged in the order given")
    p.add_argument("-o", "--out", required=True, help="merged output: .csv, .jsonl or .parquet")
    add_output_format(p)
    p.add_argument("--inputs", nargs="+", metavar="INPUT", default=None,
                   help="the INPUTs the shards were given: report files no shard labelled (default: not checked)")
    add_manifest_format(p)


def run_merge(args) -> int:
    from kwsbatch.label.merge import merge_outputs

    summary = merge_outputs(args.shards, args.out, out_format=args.output_format, inputs=args.inputs, manifest_format=args.manifest_format)
    print(summary.line(), file=sys.stderr)
    return EXIT_PARTIAL if summary.problems else EXIT_OK
