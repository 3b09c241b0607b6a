"""The command line: parse flags, make one library call, turn KwsError into one `error:` line.

Exit codes (documented in README):
  0  success
  1  error: nothing (more) was done; the message says why
  2  usage error (bad flags)
  3  finished, with problems: some files could not be read (their rows carry the error),
     or evaluate's accuracy is below --min-accuracy
  130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from kwsbatch.errors import KwsError

    try:
        return args.run(args)
    except KwsError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    from kwsbatch import __version__

    parser = argparse.ArgumentParser(prog="kwsbatch", description="Tag audio corpora with spoken keywords, in batch.")
    parser.add_argument("--version", action="version", version=f"kwsbatch {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-epoch lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in (_add_train, _add_label, _add_evaluate, _add_synth):
        add_command(sub, common)
    return parser


def _add_train(sub, common) -> None:
    p = sub.add_parser("train", parents=[common], help="train a keyword model on a labelled manifest")
    p.add_argument("manifest", help="CSV with path,label columns (paths relative to the CSV)")
    p.add_argument("--val", help="validation manifest (default: a held-out slice of the train manifest)")
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
    p.add_argument("--pooling", choices=["last", "mean"], default="last", help="last hidden state, or mean over valid frames")
    p.add_argument("--conv-channels", type=int, default=0, help="causal convolution with this many channels before the LSTM (0: none)")
    p.add_argument("--conv-kernel", type=int, default=5, help="frames each convolution output sees")
    p.add_argument("--conv-stride", type=int, default=2, help="frames between convolution outputs")
    p.add_argument("--n-mfcc", type=int, default=12, help="MFCC coefficients per frame")
    p.add_argument("--n-mels", type=int, default=40)
    p.add_argument("--clip-norm", choices=["none", "mean", "meanvar"], default="none", help="normalise each clip's coefficients over its own frames")
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
    g.add_argument("--augment", choices=["none", "light", "standard", "strong"], default="none", help="preset (default: none)")
    for flag, numbers, what in (
        ("--time-shift", "P,MAX_S", "move the clip up to MAX_S seconds either way"),
        ("--zero-pad", "P,MAX_S", "add up to MAX_S seconds of silence at each end"),
        ("--amplify", "P,MIN_DB,MAX_DB", "gain in decibels"),
        ("--speed", "P,MIN,MAX", "play speed factor (pitch moves too)"),
        ("--noise", "P,MIN_SNR_DB,MAX_SNR_DB", "background noise at a signal-to-noise ratio"),
        ("--time-mask", "P,MAX_FRAMES,COUNT", "zero COUNT runs of up to MAX_FRAMES feature frames"),
        ("--freq-mask", "P,MAX_COEFFS,COUNT", "zero COUNT bands of up to MAX_COEFFS coefficients"),
    ):
        g.add_argument(flag, type=_numbers, metavar=numbers, help=what)
    g.add_argument("--noise-dir", help="audio files for --noise (default: _background_noise_/ beside the train manifest)")


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_label(sub, common) -> None:
    p = sub.add_parser("label", parents=[common], help="label audio files, folders or manifests")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders (searched recursively) or CSV manifests")
    p.add_argument("-o", "--out", default="-", help="output CSV (default: standard output)")
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="files longer than this get an error row")
    p.add_argument("--threshold", type=float, default=0.0, metavar="P", help="label _unknown_ when the top probability is below P")
    _add_runtime_flags(p)
    p.set_defaults(run=cmd_label)


def _add_evaluate(sub, common) -> None:
    p = sub.add_parser("evaluate", parents=[common], help="score a model on a labelled manifest")
    p.add_argument("manifest", help="CSV with path,label columns")
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--predictions", default=None, help="score this predictions CSV (from `label`) instead of running a model")
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
    p.add_argument("--engines", default=None, help="comma-separated engines (default: every installed one: espeak-ng, flite)")
    p.add_argument("--unknown-words", default=None, help="word list file for _unknown_ (one word per line)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-j", "--jobs", type=int, default=2, help="clips synthesized at once")
    p.set_defaults(run=cmd_synth)


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
    from kwsbatch.features import FeatureConfig
    from kwsbatch.train import TrainConfig, train

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
    )
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

    from kwsbatch.augment import AugmentConfig

    preset = AugmentConfig.preset(args.augment)
    overrides = {}
    for name in ("time_shift", "zero_pad", "amplify", "speed", "noise", "time_mask", "freq_mask"):
        given = getattr(args, name)
        if given is not None:
            default = getattr(preset, name)
            if len(given) > len(default):
                raise ValueError(f"--{name.replace('_', '-')} takes at most {len(default)} numbers, got {len(given)}")
            overrides[name] = given + default[len(given) :]
    if args.noise_dir is not None:
        overrides["noise_dir"] = args.noise_dir
    return replace(preset, **overrides)


def cmd_label(args) -> int:
    from kwsbatch.checkpoint import checkpoint_id, default_model_path, load_checkpoint
    from kwsbatch.errors import KwsError
    from kwsbatch.label import Labeler, write_label_csv
    from kwsbatch.manifest import input_extra_columns, iter_inputs

    if not 0.0 <= args.threshold <= 1.0:
        raise KwsError(f"--threshold must be a probability in [0, 1], got {args.threshold}")
    model = Path(args.model) if args.model else default_model_path()
    labeler = Labeler(load_checkpoint(model), device=args.device, model_id=checkpoint_id(model), threshold=args.threshold)
    columns = labeler.columns(input_extra_columns(args.inputs))
    reporter = _reporter(args)
    failed = 0

    def on_row(row: dict) -> None:
        nonlocal failed
        failed += bool(row["error"])
        reporter.advance(1, failed=failed) if failed else reporter.advance(1)

    started = time.perf_counter()
    reporter.start("labelling", None)
    try:
        rows = labeler.label_rows(iter_inputs(args.inputs), batch_size=args.batch_size, jobs=args.jobs, max_seconds=args.max_seconds)
        write_label_csv(rows, args.out, columns, on_row=on_row)
    finally:
        reporter.stop()
    elapsed = time.perf_counter() - started
    n = reporter.done
    where = "standard output" if args.out == "-" else args.out
    print(
        f"labelled {n - failed} of {n} files ({failed} failed) in {elapsed:.1f} s, {n / max(elapsed, 1e-9):,.0f} files/s -> {where}",
        file=sys.stderr,
    )
    return EXIT_PARTIAL if failed else EXIT_OK


def cmd_evaluate(args) -> int:
    from rich.console import Console

    from kwsbatch.checkpoint import default_model_path
    from kwsbatch.evaluate import default_report_dir, predict_manifest, read_predictions
    from kwsbatch.metrics import evaluate_predictions
    from kwsbatch.report import render_report, write_report

    if args.predictions:
        predictions, classes, info = read_predictions(args.manifest, args.predictions)
    else:
        model = Path(args.model) if args.model else default_model_path()
        predictions, classes, info = predict_manifest(
            args.manifest, model, device=args.device, batch_size=args.batch_size, jobs=args.jobs, reporter=_reporter(args)
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

    from kwsbatch.synth import SynthConfig, read_word_list, summarize, synthesize_corpus

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
