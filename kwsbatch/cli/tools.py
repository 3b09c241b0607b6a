"""The commands about a model rather than a corpus: bench, export, info."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kwsbatch.cli.options import add_model, add_settings, settings_from
from kwsbatch.extras import install_command

EXIT_OK = 0

BENCH_EXAMPLES = """examples:
  kwsbatch bench                         # 2,000 clips: scaling over workers, the floors, label and training against the notebook
  kwsbatch bench --files 500 --device cuda --batch-size 256
  kwsbatch bench --dir /tmp/bench-clips  # keep the clips for the next run
"""


def add_bench(p: argparse.ArgumentParser) -> None:
    from kwsbatch.tools.config import BenchConfig

    add_model(p)
    add_settings(p, BenchConfig, exclude=("jobs",))  # -j is add_model's, the same field
    p.add_argument("--dir", default=None, help="make (and keep) the clips here, reusing them when they are already there (default: a temporary folder)")


def run_bench(args) -> int:
    from kwsbatch.model.checkpoint import default_model_path, load_checkpoint
    from kwsbatch.model.scorer import Scorer
    from kwsbatch.tools.bench import run_bench
    from kwsbatch.tools.config import BenchConfig

    config = settings_from(args, BenchConfig, device=args.device, batch_size=args.batch_size)
    model = Path(args.model) if args.model else default_model_path()
    scorer = Scorer(load_checkpoint(model), device=args.device)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    result = run_bench(config, scorer, model, folder=Path(args.dir) if args.dir else None, log=log)
    print("\n".join(result.lines()))
    return EXIT_OK


EXPORT_EXAMPLES = """examples:
  kwsbatch export runs/kws/best.pt -o kws.onnx
  kwsbatch export -o kws.pt --to torchscript      # the bundled model, as TorchScript
"""


def add_export(p: argparse.ArgumentParser) -> None:
    from kwsbatch.tools.config import EXPORT_FORMATS, ONNX_OPSET

    p.add_argument("checkpoint", nargs="?", default=None, metavar="CKPT", help="checkpoint (default: the bundled model)")
    p.add_argument("-o", "--out", required=True, help="model file to write: .onnx, or .pt for TorchScript")
    p.add_argument("--to", choices=EXPORT_FORMATS, default=None, help="the model's format (default: from the -o extension)")
    p.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset version")


def run_export(args) -> int:
    from kwsbatch.model.checkpoint import default_model_path
    from kwsbatch.tools.export import TOLERANCE, export_format, export_model

    model = Path(args.checkpoint) if args.checkpoint else default_model_path()
    result = export_model(model, args.out, export_format=export_format(args.out, args.to), opset=args.opset)
    if result.max_difference is None:
        checked = f"not checked: onnxruntime is not installed ({install_command('onnx')})"
    else:
        checked = f"matches kwsbatch on {result.checked_clips} clips (max |dp| {result.max_difference:.1e} <= {TOLERANCE:g})"
    print(f"wrote {result.path} ({result.export_format}, {result.size_bytes / 1e6:.2f} MB): {checked}", file=sys.stderr)
    return EXIT_OK


INFO_EXAMPLES = """examples:
  kwsbatch info                          # the bundled model
  kwsbatch info runs/kws/best.pt --json | jq .metrics
"""


def add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CKPT", help="checkpoint (default: the bundled model)")
    p.add_argument("--json", action="store_true", help="print JSON for machines")


def run_info(args) -> int:
    import json

    from kwsbatch.model.checkpoint import default_model_path
    from kwsbatch.tools.info import describe_model, format_description

    info = describe_model(Path(args.checkpoint) if args.checkpoint else default_model_path())
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return EXIT_OK
