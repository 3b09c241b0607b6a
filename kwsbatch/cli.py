"""The command line: parse flags, make one library call, turn KwsError into one `error:` line.

Exit codes (documented in README):
  0  success
  1  error: nothing (more) was done; the message says why
  2  usage error (bad flags)
  3  finished, with problems: some files could not be read (their rows carry the error),
     or evaluate's accuracy is below --min-accuracy
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
    from kwsbatch.lock import LockedError

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
    for add_command in (_add_train, _add_label, _add_evaluate, _add_synth, _add_bench):
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
    p.add_argument("--n-mfcc", type=int, default=12, help="MFCC coefficients per frame")
    p.add_argument("--n-mels", type=int, default=40)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    _add_runtime_flags(p, inference=False)
    p.set_defaults(run=cmd_train)


def _add_label(sub, common) -> None:
    p = sub.add_parser("label", parents=[common], help="label audio files, folders or manifests")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders (searched recursively) or CSV manifests")
    p.add_argument("-o", "--out", default="-", help="output CSV, updated incrementally (default: standard output)")
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where features and the model run")
    p.add_argument("--batch-size", type=int, default=64, help="clips (or windows) per model batch")
    p.add_argument("-j", "--jobs", type=int, default=0, help="worker threads that decode and score (default 0: one per core)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="files longer than this get an error row (without --window)")
    p.add_argument("--window", type=float, default=None, metavar="SECONDS", help="slide a window this long over each file; one row per detection")
    p.add_argument("--hop", type=float, default=None, metavar="SECONDS", help="seconds between windows (default: half the window)")
    p.add_argument("--force", action="store_true", help="relabel every file, not only new or changed ones")
    p.add_argument("--wait", action="store_true", help="when another run is writing the same output, wait for it instead of exiting with status 75")
    p.add_argument("--log", default=None, metavar="FILE", help="append the summary, warnings and errors to FILE, with timestamps")
    p.set_defaults(run=cmd_label, parser=p)


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
        )
        features = FeatureConfig(sample_rate=args.sample_rate, n_mfcc=args.n_mfcc, n_mels=args.n_mels, f_max=min(7600.0, args.sample_rate / 2))
    except ValueError as e:
        raise KwsError(f"invalid training settings: {e}") from None
    run_dir = Path(args.out) if args.out else Path("runs") / Path(args.manifest).stem
    reporter = _reporter(args, unit="clips")
    result = train(
        args.manifest,
        run_dir,
        config=config,
        features=features,
        val_manifest=args.val,
        device=args.device,
        resume=args.resume,
        reporter=reporter,
    )
    print(
        f"best epoch {result.best_epoch}: validation accuracy {result.best_val_accuracy:.2%}; "
        f"wrote {run_dir / 'best.pt'}, {run_dir / 'last.pt'}, {run_dir / 'history.csv'}"
        + (f"; skipped {result.skipped} unreadable clips" if result.skipped else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_label(args) -> int:
    from kwsbatch.checkpoint import checkpoint_id, default_model_path, load_checkpoint
    from kwsbatch.errors import KwsError
    from kwsbatch.job import run_label_job, stream_labels
    from kwsbatch.label import Labeler
    from kwsbatch.pipeline import LabelConfig
    from kwsbatch.windows import WindowConfig

    to_stdout = args.out == "-"
    if to_stdout and (args.force or args.wait):
        args.parser.error("--force and --wait need an output file (-o FILE)")
    if args.hop is not None and args.window is None:
        args.parser.error("--hop needs --window")
    try:
        window = WindowConfig(args.window, args.hop if args.hop is not None else args.window / 2) if args.window is not None else None
        config = LabelConfig(batch_size=args.batch_size, jobs=args.jobs, max_seconds=args.max_seconds, window=window)
    except ValueError as e:
        args.parser.error(str(e))
    reporter = _reporter(args)
    reporter.log_file = args.log
    try:
        model = Path(args.model) if args.model else default_model_path()
        labeler = Labeler(load_checkpoint(model), device=args.device, model_id=checkpoint_id(model))
        if to_stdout:
            summary = stream_labels(labeler, args.inputs, config, reporter=reporter)
        else:
            summary = run_label_job(labeler, args.inputs, args.out, config, force=args.force, wait=args.wait, reporter=reporter)
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


def cmd_bench(args) -> int:
    from kwsbatch.bench import BenchConfig, run_bench
    from kwsbatch.checkpoint import checkpoint_id, default_model_path, load_checkpoint
    from kwsbatch.label import Labeler

    try:
        config = BenchConfig(
            files=args.files, device=args.device, batch_size=args.batch_size, jobs=args.jobs, single_files=args.single_files, seed=args.seed
        )
    except ValueError as e:
        args.parser.error(str(e))
    model = Path(args.model) if args.model else default_model_path()
    labeler = Labeler(load_checkpoint(model), device=args.device, model_id=checkpoint_id(model))
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    result = run_bench(config, labeler, model, folder=Path(args.dir) if args.dir else None, log=log)
    print("\n".join(result.lines()))
    return EXIT_OK
