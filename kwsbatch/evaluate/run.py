"""`kwsbatch evaluate` as one call: a labelled manifest (and a model, or a label output) in, a report folder out."""

from __future__ import annotations

import os
from pathlib import Path

from kwsbatch.evaluate.metrics import Evaluation, evaluate_predictions
from kwsbatch.evaluate.predict import default_report_dir, predict_manifest, read_predictions
from kwsbatch.evaluate.report import write_report
from kwsbatch.label.config import LabelConfig
from kwsbatch.model.checkpoint import default_model_path
from kwsbatch.progress import Reporter


def evaluate_manifest(
    manifest: str | os.PathLike,
    *,
    out_dir: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    config: LabelConfig = LabelConfig(),
    manifest_format: str | None = None,
    reporter: Reporter | None = None,
) -> tuple[Evaluation, Path]:
    """Score the model (default: the bundled one), or a label output given as predictions, on a labelled
    manifest; write the report to out_dir (default: reports/<manifest name>) and return it with the folder."""
    if predictions:
        table, classes, info = read_predictions(manifest, predictions, manifest_format=manifest_format)
    else:
        table, classes, info = predict_manifest(
            manifest, Path(model) if model else default_model_path(), device=device, config=config, reporter=reporter,
            manifest_format=manifest_format,
        )
    evaluation = evaluate_predictions(table, classes)
    out_dir = Path(out_dir) if out_dir else default_report_dir(manifest)
    write_report(evaluation, table, out_dir, model_info=info)
    return evaluation, out_dir
