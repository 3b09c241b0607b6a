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
    for add_command in (_add_train, _add_label, _add_evaluate, _add_synth, _add_export, _add_info):
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
    p.add_argument("--pooling", choices=["last", "mean"], default="last", help="last hidden state, or mean over valid frames")
    p.add_argument("--n-mfcc", type=int, default=12, help="MFCC coefficients per frame")
    p.add_argument("--n-mels", type=int, default=40)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    _add_runtime_flags(p, inference=False)
    p.set_defaults(run=cmd_train)


def _add_label(sub, common) -> None:
    p = sub.add_parser("label", parents=[common], help="label audio files, folders or manifests")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders (searched recursively) or manifests")
    p.add_argument("-o", "--out", default="-", help="output file: .csv, .jsonl or .parquet (default: CSV on standard output)")
    p.add_argument("--format", choices=["csv", "jsonl", "parquet"], default=None, help="output format (default: from the -o extension, else csv)")
    _add_manifest_format(p, "--manifest-format")
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="files longer than this get an error row")
    _add_runtime_flags(p)
    p.set_defaults(run=cmd_label)


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
    p.add_argument("--engines", default=None, help="comma-separated engines (default: every installed one: espeak-ng, flite)")
    p.add_argument("--unknown-words", default=None, help="word list file for _unknown_ (one word per line)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-j", "--jobs", type=int, default=2, help="clips synthesized at once")
    p.set_defaults(run=cmd_synth)


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


def _add_manifest_format(p: argparse.ArgumentParser, *flags: str) -> None:
    from kwsbatch.dialects import MANIFEST_FORMATS  # light: no torch

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
        manifest_format=args.manifest_format,
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
    from kwsbatch.label import Labeler
    from kwsbatch.manifest import input_extra_columns, iter_inputs
    from kwsbatch.output import column_types, output_format, write_predictions

    model = Path(args.model) if args.model else default_model_path()
    out_format = output_format(args.out, args.format)
    labeler = Labeler(load_checkpoint(model), device=args.device, model_id=checkpoint_id(model))
    columns = labeler.columns(input_extra_columns(args.inputs, manifest_format=args.manifest_format))
    reporter = _reporter(args)
    failed = 0

    def on_row(row: dict) -> None:
        nonlocal failed
        failed += bool(row["error"])
        reporter.advance(1, failed=failed) if failed else reporter.advance(1)

    started = time.perf_counter()
    reporter.start("labelling", None)
    try:
        inputs = iter_inputs(args.inputs, manifest_format=args.manifest_format)
        rows = labeler.label_rows(inputs, batch_size=args.batch_size, jobs=args.jobs, max_seconds=args.max_seconds)
        write_predictions(rows, args.out, columns, column_types(labeler.classes), output_format=out_format, on_row=on_row)
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


def cmd_export(args) -> int:
    from kwsbatch.checkpoint import default_model_path
    from kwsbatch.export import TOLERANCE, export_format, export_model

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

    from kwsbatch.checkpoint import default_model_path
    from kwsbatch.info import describe_checkpoint, format_description

    info = describe_checkpoint(Path(args.checkpoint) if args.checkpoint else default_model_path())
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return EXIT_OK
