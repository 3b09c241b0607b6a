"""The command line: parse flags, make one library call, turn KwsError into one `error:` line.

Exit codes (documented in README):
  0  success
  1  error: nothing (more) was done; the message says why
  2  usage error (bad flags)
  3  finished, with problems: some files could not be read (their rows carry the error),
     evaluate's accuracy is below --min-accuracy, or merge found missing or duplicated files
  75 label: another run holds the output's lock; nothing was done (EX_TEMPFAIL: try again later)
  130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, 2, 3, 75, 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from kwsbatch.errors import KwsError
    from kwsbatch.files.lock import LockedError

    try:
        return args.run(args)
    except LockedError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except KwsError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of standard output went away (`kwsbatch label DIR | head`): stop quietly,
        # and keep Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    from kwsbatch import __version__

    parser = argparse.ArgumentParser(prog="kwsbatch", description="Tag audio corpora with spoken keywords, in batch.")
    parser.add_argument("--version", action="version", version=f"kwsbatch {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-epoch lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in (_add_train, _add_label, _add_evaluate, _add_synth, _add_manifest, _add_check, _add_fetch, _add_bench, _add_export, _add_info, _add_merge):
        add_command(sub, common)
    return parser


def _add_train(sub, common) -> None:
    p = sub.add_parser("train", parents=[common], help="train a keyword model on a labelled manifest")
    p.add_argument("manifest", help="manifest with path and label columns: CSV, TSV, JSON lines or audiofolder metadata.csv")
    p.add_argument("--val", help="validation manifest (default: a held-out slice of the train manifest)")
    _add_manifest_format(p, "--manifest-format", "--format")
    p.add_argument("-o", "--out", default=None, help="run folder for best.pt, last.pt, history.csv (default: runs/<manifest name>)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lr-step", type=int, default=5, help="epochs between learning-rate decays")
    p.add_argument("--lr-gamma", type=float, default=0.5, help="factor applied at each decay")
    p.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step (gradient accumulation)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share held out when --val is not given")
    p.add_argument("--patience", type=int, default=0, help="early stop after N epochs without improvement (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=64, help="LSTM units per layer")
    p.add_argument("--layers", type=int, default=3, help="stacked LSTM layers")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout between LSTM layers")
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--pooling", choices=["last", "mean"], default="mean", help="mean over valid frames (default), or the last hidden state (the notebook's)")
    p.add_argument("--conv-channels", type=int, default=64, help="causal convolution with this many channels before the LSTM (0: none, the notebook's)")
    p.add_argument("--conv-kernel", type=int, default=5, help="frames each convolution output sees")
    p.add_argument("--conv-stride", type=int, default=2, help="frames between convolution outputs")
    p.add_argument("--n-mfcc", type=int, default=12, help="MFCC coefficients per frame")
    p.add_argument("--n-mels", type=int, default=40)
    p.add_argument("--clip-norm", choices=["none", "mean", "meanvar"], default="mean", help="normalise each clip's coefficients over its own frames (none: the notebook's)")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--balance", choices=["none", "sample", "weight"], default="none", help="class-balanced sampling or loss weights")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    p.add_argument("--finetune", metavar="CKPT", help="start from this checkpoint and train only its classifier")
    _add_augment_flags(p)
    _add_runtime_flags(p, inference=False)
    p.set_defaults(run=cmd_train)


def _add_augment_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "augmentation", "each transform: a probability per clip, then its range; numbers left out keep the preset's"
    )
    g.add_argument(
        "--augment",
        choices=["none", "light", "standard", "strong", "realistic"],
        help="preset (default: standard, with background noise when the manifest's folder has _background_noise_/)",
    )
    for flag, numbers, what in (
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
        g.add_argument(flag, type=_numbers, metavar=numbers, help=what)
    g.add_argument(
        "--noise-dir", help="--noise's recordings: a folder of audio, or a manifest's _silence_ rows (default: _background_noise_/ beside the train manifest)"
    )
    g.add_argument("--rooms", choices=["shoebox", "exponential"], help="room model for --reverb (shoebox needs the augment extra)")
    g.add_argument("--codecs", metavar="NAMES", help="codecs for --codec, from mulaw,alaw,gsm,vorbis,opus,mp3")


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_label(sub, common) -> None:
    p = sub.add_parser("label", parents=[common], help="label audio files, folders or manifests")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders (searched recursively) or manifests")
    p.add_argument("-o", "--out", default="-", help="output file: .csv, .jsonl or .parquet, updated incrementally (default: CSV on standard output)")
    p.add_argument("--format", choices=["csv", "jsonl", "parquet"], default=None, help="output format (default: from the -o extension, else csv)")
    _add_manifest_format(p, "--manifest-format")
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where features and the model run")
    p.add_argument("--batch-size", type=int, default=64, help="clips (or windows) per model batch")
    p.add_argument("-j", "--jobs", type=int, default=0, help="workers that decode and score (default 0: one per core)")
    p.add_argument("--processes", action="store_true",
                   help="workers are processes, not threads: faster on the CPU for large runs, 2 s slower to start")
    p.add_argument("--max-seconds", type=float, default=30.0, help="files longer than this get an error row (without --window)")
    p.add_argument("--threshold", type=float, default=0.0, metavar="P", help="label _unknown_ when the top probability is below P")
    p.add_argument("--window", type=float, default=None, metavar="SECONDS", help="slide a window this long over each file; one row per detection")
    p.add_argument("--hop", type=float, default=None, metavar="SECONDS", help="seconds between windows (default: half the window)")
    p.add_argument("--force", action="store_true", help="relabel every file, not only new or changed ones")
    p.add_argument("--wait", action="store_true", help="when another run is writing the same output, wait for it instead of exiting with status 75")
    p.add_argument("--log", default=None, metavar="FILE", help="append the summary, warnings and errors to FILE, with timestamps")
    p.add_argument("--dask", default=os.environ.get("KWSBATCH_DASK"), metavar="ADDRESS",
                   help="score on a dask.distributed scheduler (tcp://host:8786), or 'local:N' for N local worker processes (default: $KWSBATCH_DASK)")
    p.add_argument("--shard", default=None, metavar="K/N", help="label only shard K (0 to N-1) of N, chosen by a stable hash of each path; join with `kwsbatch merge`")
    p.set_defaults(run=cmd_label, parser=p)


def _add_evaluate(sub, common) -> None:
    p = sub.add_parser("evaluate", parents=[common], help="score a model on a labelled manifest")
    p.add_argument("manifest", help="manifest with path and label columns: CSV, TSV, JSON lines or audiofolder metadata.csv")
    _add_manifest_format(p, "--manifest-format", "--format")
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--predictions", default=None, help="score this `label` output (CSV, JSON lines, Parquet) instead of running a model")
    p.add_argument("-o", "--out", default=None, help="report folder (default: reports/<manifest name>)")
    p.add_argument("--min-accuracy", type=float, default=None, help="exit with status 3 when accuracy is below this (0-1)")
    _add_runtime_flags(p)
    p.set_defaults(run=cmd_evaluate)


def _add_synth(sub, common) -> None:
    p = sub.add_parser("synth", parents=[common], help="make a labelled keyword corpus with text-to-speech")
    p.add_argument("--words", required=True, help="comma-separated keywords, e.g. yes,no,up,down")
    p.add_argument("-o", "--out", required=True, help="new (or empty) corpus folder")
    p.add_argument("--per-word", type=int, default=300, help="clips per keyword")
    p.add_argument("--unknown", type=int, default=None, help="_unknown_ clips (default: 2 x per-word)")
    p.add_argument("--silence", type=int, default=None, help="_silence_ clips (default: per-word)")
    p.add_argument("--speakers", type=int, default=None, help="voice settings to sample (default: per-word)")
    p.add_argument("--engines", default=None, help="comma-separated engines (default: every installed one: espeak-ng, flite, festival)")
    p.add_argument("--unknown-words", default=None, help="word list file for _unknown_ (one word per line)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-j", "--jobs", type=int, default=2, help="clips synthesized at once")
    p.set_defaults(run=cmd_synth)


def _add_manifest(sub, common) -> None:
    p = sub.add_parser("manifest", parents=[common], help="train/val/test manifests from a Speech Commands-like folder tree")
    p.add_argument("data_dir", metavar="DIR", help="folder of <word>/ folders (and _background_noise_/)")
    p.add_argument("-o", "--out", required=True, help="folder for train.csv, val.csv, test.csv and the _silence_ clips")
    _add_manifest_flags(p)
    p.set_defaults(run=cmd_manifest)


def _add_manifest_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--words", default=None, help="comma-separated keywords; other words become _unknown_ "
                   "(default: yes,no,up,down,left,right,on,off,stop,go; 'all': every word is a class)")
    p.add_argument("--unknown-percent", type=_percent, default=10.0, help="_unknown_ clips per split, %% of its keyword clips ('all': every one)")
    p.add_argument("--silence-percent", type=_percent, default=10.0, help="_silence_ clips per split, %% of its keyword clips")
    p.add_argument("--validation-percent", type=_percent, default=10.0, help="hash split only (no validation_list.txt)")
    p.add_argument("--testing-percent", type=_percent, default=10.0, help="hash split only (no testing_list.txt)")
    p.add_argument("--seed", type=int, default=0, help="which unknown clips are kept, where silence is cut")


def _percent(text: str) -> float:
    if text == "all":
        return float("inf")
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None


def _add_check(sub, common) -> None:
    p = sub.add_parser("check", parents=[common], help="audit a corpus before training or labelling")
    p.add_argument("inputs", nargs="+", metavar="MANIFEST|FOLDER", help="manifests, folders of train/val/test.csv, or audio folders")
    p.add_argument("-o", "--out", default=None, help="JSON report (default: reports/<first input name>/check.json)")
    p.add_argument("--strict", action="store_true", help="exit with status 3 when any problem is found")
    p.add_argument("--max-listed", type=int, default=1000, help="problem files listed in the JSON report, per kind")
    p.add_argument("-j", "--jobs", type=int, default=1, help="reading processes")
    p.set_defaults(run=cmd_check)


def _add_fetch(sub, common) -> None:
    p = sub.add_parser("fetch", parents=[common], help="download a public data set and write its manifests")
    p.add_argument("dataset", metavar="DATASET", help="speech-commands")
    p.add_argument("data_dir", metavar="DIR", help="folder to unpack it into")
    p.add_argument("--version", default="0.02", help="data set version (speech-commands: 0.01 or 0.02)")
    p.add_argument("--url", default=None, help="download from here instead (a mirror); the published checksum then no longer applies")
    p.add_argument("--sha256", default=None, help="require this checksum ('skip': none); default: the published one")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive after unpacking")
    p.add_argument("-o", "--out", default=None, help="manifest folder (default: DIR/manifests)")
    p.add_argument("--no-manifest", action="store_true", help="only download and unpack")
    _add_manifest_flags(p)
    p.set_defaults(run=cmd_fetch)


def _add_bench(sub, common) -> None:
    p = sub.add_parser("bench", parents=[common], help="measure label's throughput against the decode and compute floors")
    p.add_argument("--files", type=int, default=2000, help="clips to make and label (0.5-1.5 s, WAV and FLAC, some stereo 44.1 kHz)")
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where features and the model run")
    p.add_argument("--batch-size", type=int, default=64, help="label's --batch-size")
    p.add_argument("-j", "--jobs", type=int, default=0, help="label's --jobs (default 0: one worker per core)")
    p.add_argument("--single-files", type=int, default=None, help="clips for the one-at-a-time run (default: all of them)")
    p.add_argument("--dir", default=None, help="make (and keep) the clips here, reusing them when they are already there")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_bench, parser=p)


def _add_export(sub, common) -> None:
    p = sub.add_parser("export", parents=[common], help="write a model that runs without kwsbatch (ONNX, TorchScript)")
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CKPT", help="checkpoint (default: the bundled model)")
    p.add_argument("-o", "--out", required=True, help="model file to write: .onnx, or .pt for TorchScript")
    p.add_argument("--format", choices=["onnx", "torchscript"], default=None, help="default: from the -o extension")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.set_defaults(run=cmd_export)


def _add_info(sub, common) -> None:
    p = sub.add_parser("info", parents=[common], help="show what a checkpoint is: classes, settings, size, provenance")
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CKPT", help="checkpoint (default: the bundled model)")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(run=cmd_info)


def _add_merge(sub, common) -> None:
    p = sub.add_parser("merge", parents=[common], help="join the outputs of a sharded label run (label --shard K/N)")
    p.add_argument("shards", nargs="+", metavar="SHARD", help="label outputs (.csv, .jsonl, .parquet), merged in the order given")
    p.add_argument("-o", "--out", required=True, help="merged output: .csv, .jsonl or .parquet")
    p.add_argument("--format", choices=["csv", "jsonl", "parquet"], default=None, help="output format (default: from the -o extension, else csv)")
    p.add_argument("--inputs", nargs="+", metavar="INPUT", default=None, help="the INPUTs the shards were given: report files no shard labelled")
    _add_manifest_format(p, "--manifest-format")
    p.set_defaults(run=cmd_merge)


def _add_manifest_format(p: argparse.ArgumentParser, *flags: str) -> None:
    from kwsbatch.files.dialects import MANIFEST_FORMATS  # light: no torch

    p.add_argument(
        *flags,
        dest="manifest_format",
        choices=MANIFEST_FORMATS,
        default=None,
        help="how to read manifests (default: from the file name: .csv, .tsv, .jsonl/.json, metadata.csv)",
    )


def _add_runtime_flags(p: argparse.ArgumentParser, *, inference: bool = True) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where features and the model run")
    if inference:
        p.add_argument("--batch-size", type=int, default=64, help="clips per model batch")
    p.add_argument("-j", "--jobs", type=int, default=1, help="decode processes (default 1: decode in the main process)")


def _reporter(args, unit: str = "files"):
    from kwsbatch.progress import RichReporter

    return RichReporter(unit=unit, quiet=args.quiet)


def cmd_train(args) -> int:
    from kwsbatch.errors import KwsError
    from kwsbatch.model.features import FeatureConfig
    from kwsbatch.train.loop import TrainConfig, train

    try:
        augment = _augment_config(args)
        config = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            lr_step=args.lr_step,
            lr_gamma=args.lr_gamma,
            accumulate=args.accumulate,
            seed=args.seed,
            val_fraction=args.val_fraction,
            patience=args.patience,
            jobs=args.jobs,
            hidden=args.hidden,
            layers=args.layers,
            dropout=args.dropout,
            bidirectional=args.bidirectional,
            pooling=args.pooling,
            conv_channels=args.conv_channels,
            conv_kernel=args.conv_kernel,
            conv_stride=args.conv_stride,
            balance=args.balance,
            finetune=args.finetune,
        )
        features = FeatureConfig(
            sample_rate=args.sample_rate,
            n_mfcc=args.n_mfcc,
            n_mels=args.n_mels,
            f_max=min(7600.0, args.sample_rate / 2),
            clip_norm=args.clip_norm,
        )
    except ValueError as e:
        raise KwsError(f"invalid training settings: {e}") from None
    run_dir = Path(args.out) if args.out else Path("runs") / Path(args.manifest).stem
    reporter = _reporter(args, unit="clips")
    result = train(
        args.manifest,
        run_dir,
        config=config,
        features=features,
        augment=augment,
        val_manifest=args.val,
        device=args.device,
        resume=args.resume,
        reporter=reporter,
        manifest_format=args.manifest_format,
    )
    if os.environ.get("RANK", "0") != "0":
        return EXIT_OK  # under torchrun: rank 0 speaks for the run
    print(
        f"best epoch {result.best_epoch}: validation accuracy {result.best_val_accuracy:.2%}, "
        f"temperature {result.temperature:.3f}; "
        f"wrote {run_dir / 'best.pt'}, {run_dir / 'last.pt'}, {run_dir / 'history.csv'}"
        + (f"; skipped {result.skipped} unreadable clips" if result.skipped else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def _augment_config(args):
    """The --augment preset with the individual flags given laid over it (ValueError when invalid)."""
    from dataclasses import replace

    from kwsbatch.train.augment import AugmentConfig
    from kwsbatch.train.loop import default_noise_dir

    preset = AugmentConfig.preset(args.augment or "standard")
    overrides = {}
    if args.augment is None and args.noise is None and args.noise_dir is None and not default_noise_dir(args.manifest).is_dir():
        # Noise was not asked for, and there is none beside the manifest: the default goes without, quietly.
        overrides["noise"] = (0.0, *preset.noise[1:])
    for name in AugmentConfig.probability_fields():
        given = getattr(args, name)
        if given is not None:
            default = getattr(preset, name)
            if len(given) > len(default):
                raise ValueError(f"--{name.replace('_', '-')} takes at most {len(default)} numbers, got {len(given)}")
            overrides[name] = given + default[len(given) :]
    for name in ("noise_dir", "rooms", "codecs"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return replace(preset, **overrides)


def cmd_label(args) -> int:
    import contextlib
    import functools

    from kwsbatch.errors import KwsError
    from kwsbatch.files.lock import lock_path, output_lock
    from kwsbatch.files.output import output_format

    to_stdout = args.out == "-"
    out_format = output_format(args.out, args.format)
    if to_stdout and (args.force or args.wait):
        args.parser.error("--force and --wait need an output file (-o FILE)")
    if to_stdout and args.dask:
        args.parser.error("--dask needs an output file (-o FILE): the driver writes it with the journal")
    if args.hop is not None and args.window is None:
        args.parser.error("--hop needs --window")
    if not 0.0 <= args.threshold <= 1.0:
        args.parser.error(f"--threshold must be a probability in [0, 1], got {args.threshold}")
    reporter = _reporter(args)
    reporter.log_file = args.log
    if not (to_stdout or args.wait) and lock_path(args.out).is_file():
        # A cron run that finds another one writing the output stops here, before torch and the
        # model load (0.1 s instead of 1.5 s). run_label_job takes the lock for the run itself;
        # without a lock file no run holds it, and this check would only leave one behind.
        try:
            with output_lock(args.out):
                pass
        except KwsError as e:
            reporter.record(f"error: {e}")
            raise

    from kwsbatch.label.job import run_label_job, stream_labels
    from kwsbatch.label.pipeline import LabelConfig, score_files
    from kwsbatch.label.rows import RowLayout
    from kwsbatch.label.shard import Shard
    from kwsbatch.label.windows import WindowConfig
    from kwsbatch.model.checkpoint import default_model_path, load_checkpoint
    from kwsbatch.model.scorer import Scorer

    try:
        window = WindowConfig(args.window, args.hop if args.hop is not None else args.window / 2) if args.window is not None else None
        config = LabelConfig(
            batch_size=args.batch_size, jobs=args.jobs, processes=args.processes, max_seconds=args.max_seconds, window=window
        )
        shard = Shard.parse(args.shard) if args.shard is not None else None
    except ValueError as e:
        args.parser.error(str(e))
    try:
        model = Path(args.model) if args.model else default_model_path()
        checkpoint = load_checkpoint(model)
        device = "cpu" if args.processes and args.device == "auto" else args.device  # worker processes score on the CPU
        scorer = Scorer(checkpoint, device=device)
        layout = RowLayout(checkpoint.classes, model_id=scorer.model_id, threshold=args.threshold)
        if to_stdout:
            summary = stream_labels(
                functools.partial(score_files, scorer), layout, args.inputs, config, output_format=out_format, manifest_format=args.manifest_format, shard=shard,
                reporter=reporter,
            )
        else:
            with contextlib.ExitStack() as stack:
                score = functools.partial(score_files, scorer)
                if args.dask:
                    from kwsbatch.label.cluster import connect, score_on_cluster

                    client = stack.enter_context(connect(args.dask))
                    score = functools.partial(score_on_cluster, client, model.resolve(), scorer.model_id, args.device)
                summary = run_label_job(
                    score, layout, args.inputs, args.out, config, output_format=out_format, manifest_format=args.manifest_format,
                    force=args.force, wait=args.wait, shard=shard, reporter=reporter,
                )
    except KwsError as e:
        reporter.record(f"error: {e}")
        raise
    except KeyboardInterrupt:
        hint = "" if to_stdout else f"; files labelled so far are kept in {args.out}.journal: run the same command again to finish"
        reporter.record(f"interrupted{hint}")
        print(f"interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    reporter.record(summary.line())
    if not args.quiet:
        print(summary.line(), file=sys.stderr)
    return EXIT_PARTIAL if summary.failed else EXIT_OK


def cmd_evaluate(args) -> int:
    from rich.console import Console

    from kwsbatch.evaluate.metrics import evaluate_predictions
    from kwsbatch.evaluate.predict import default_report_dir, predict_manifest, read_predictions
    from kwsbatch.evaluate.report import render_report, write_report
    from kwsbatch.model.checkpoint import default_model_path

    if args.predictions:
        predictions, classes, info = read_predictions(args.manifest, args.predictions, manifest_format=args.manifest_format)
    else:
        model = Path(args.model) if args.model else default_model_path()
        predictions, classes, info = predict_manifest(
            args.manifest,
            model,
            device=args.device,
            batch_size=args.batch_size,
            jobs=args.jobs,
            reporter=_reporter(args),
            manifest_format=args.manifest_format,
        )
    evaluation = evaluate_predictions(predictions, classes)
    out_dir = Path(args.out) if args.out else default_report_dir(args.manifest)
    write_report(evaluation, predictions, out_dir, model_info=info)
    render_report(evaluation, Console())
    print(f"report written to {out_dir}", file=sys.stderr)
    if args.min_accuracy is not None and evaluation.accuracy < args.min_accuracy:
        print(f"accuracy {evaluation.accuracy:.2%} is below --min-accuracy {args.min_accuracy:.2%}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def cmd_synth(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from kwsbatch.corpus.synth import SynthConfig, read_word_list, summarize, synthesize_corpus

    config = SynthConfig(
        words=tuple(w for w in args.words.split(",") if w.strip()),
        per_word=args.per_word,
        unknown=args.unknown,
        silence=args.silence,
        unknown_words=read_word_list(args.unknown_words) if args.unknown_words else None,
        speakers=args.speakers,
        engines=tuple(args.engines.split(",")) if args.engines else None,
        seed=args.seed,
    )
    reporter = _reporter(args, unit="clips")
    reporter.start("synthesizing", config.n_clips)
    try:
        manifest = synthesize_corpus(config, args.out, jobs=args.jobs, progress=reporter.advance)
    finally:
        reporter.stop()
    counts = summarize(manifest).reset_index()
    table = Table(title=f"{len(manifest)} clips in {args.out}")
    for column in counts.columns:
        table.add_column(str(column), justify="left" if column in ("label", "engine") else "right")
    for row in counts.itertuples(index=False):
        table.add_row(*map(str, row))
    Console().print(table)
    return EXIT_OK


def cmd_manifest(args) -> int:
    _write_manifests(args, args.data_dir, args.out)
    return EXIT_OK


def _write_manifests(args, data_dir, out) -> None:
    from rich.console import Console
    from rich.table import Table

    from kwsbatch.corpus.speech_commands import SPLITS, STANDARD_WORDS, ManifestConfig, write_manifests

    words = STANDARD_WORDS if args.words is None else None if args.words.strip() == "all" else tuple(args.words.split(","))
    config = ManifestConfig(words=words, unknown_percent=args.unknown_percent, silence_percent=args.silence_percent,
                            validation_percent=args.validation_percent, testing_percent=args.testing_percent, seed=args.seed)
    summary = write_manifests(data_dir, out, config)
    table = Table(title=f"{summary.total:,} clips, split by {'the list files' if summary.split_by == 'lists' else 'speaker hash'}")
    table.add_column("label")
    for split in SPLITS:
        table.add_column(split, justify="right")
    for label in sorted({label for counts in summary.counts.values() for label in counts}):
        table.add_row(label, *(f"{summary.counts[s].get(label, 0):,}" for s in SPLITS))
    Console(stderr=True).print(table)
    if summary.listed_missing:
        print(f"warning: {summary.listed_missing} files named in the split lists are not in {data_dir}", file=sys.stderr)
    print(f"wrote {', '.join(str(Path(out) / f'{s}.csv') for s in SPLITS)}", file=sys.stderr)


def cmd_check(args) -> int:
    import json

    from rich.console import Console

    from kwsbatch.corpus.check import check_corpus, render_check
    from kwsbatch.files.atomic import atomic_write

    report = check_corpus(args.inputs, jobs=args.jobs, max_listed=args.max_listed, reporter=_reporter(args))
    render_check(report, Console())
    out = Path(args.out) if args.out else Path("reports") / Path(os.path.abspath(args.inputs[0])).stem / "check.json"
    with atomic_write(out) as f:
        f.write(json.dumps(report.as_dict(), indent=2) + "\n")
    print(f"report written to {out}", file=sys.stderr)
    return EXIT_PARTIAL if args.strict and report.problems else EXIT_OK


def cmd_fetch(args) -> int:
    from kwsbatch.corpus.fetch import fetch_dataset

    result = fetch_dataset(args.dataset, args.version, args.data_dir, url=args.url, sha256=args.sha256,
                           keep_archive=args.keep_archive, reporter=_reporter(args, unit="bytes"))
    print(f"{'fetched' if result.downloaded else 'already fetched'} {result.url} into {result.data_dir}", file=sys.stderr)
    if not args.no_manifest:
        _write_manifests(args, args.data_dir, args.out or Path(args.data_dir) / "manifests")


def cmd_bench(args) -> int:
    from kwsbatch.model.checkpoint import default_model_path, load_checkpoint
    from kwsbatch.model.scorer import Scorer
    from kwsbatch.tools.bench import BenchConfig, run_bench

    try:
        config = BenchConfig(
            files=args.files, device=args.device, batch_size=args.batch_size, jobs=args.jobs, single_files=args.single_files, seed=args.seed
        )
    except ValueError as e:
        args.parser.error(str(e))
    model = Path(args.model) if args.model else default_model_path()
    checkpoint = load_checkpoint(model)
    scorer = Scorer(checkpoint, device=args.device)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    result = run_bench(config, scorer, model, folder=Path(args.dir) if args.dir else None, log=log)
    print("\n".join(result.lines()))


def cmd_export(args) -> int:
    from kwsbatch.model.checkpoint import default_model_path
    from kwsbatch.tools.export import TOLERANCE, export_format, export_model

    model = Path(args.checkpoint) if args.checkpoint else default_model_path()
    result = export_model(model, args.out, export_format=export_format(args.out, args.format), opset=args.opset)
    if result.max_difference is None:
        checked = "not checked: onnxruntime is not installed (pip install 'kwsbatch[onnx]')"
    else:
        checked = f"matches kwsbatch on {result.checked_clips} clips (max |dp| {result.max_difference:.1e} <= {TOLERANCE:g})"
    print(f"wrote {result.path} ({result.export_format}, {result.size_bytes / 1e6:.2f} MB): {checked}", file=sys.stderr)
    return EXIT_OK


def cmd_info(args) -> int:
    import json

    from kwsbatch.model.checkpoint import default_model_path
    from kwsbatch.tools.info import describe_checkpoint, format_description

    info = describe_checkpoint(Path(args.checkpoint) if args.checkpoint else default_model_path())
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return EXIT_OK


def cmd_merge(args) -> int:
    from kwsbatch.label.merge import merge_outputs

    summary = merge_outputs(args.shards, args.out, out_format=args.format, inputs=args.inputs, manifest_format=args.manifest_format)
    print(summary.line(), file=sys.stderr)
    return EXIT_PARTIAL if summary.problems else EXIT_OK
