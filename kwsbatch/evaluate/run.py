"""`kwsbatch evaluate` as one call: a labelled manifest (and a model, or a label output) in, a report folder out."""

from __future__ import annotations

import os
from pathlib import Path

from kwsbatch.evaluate.config import WakewordConfig
from kwsbatch.evaluate.groups import GroupScores, check_group_columns, score_groups
from kwsbatch.evaluate.metrics import Evaluation, evaluate_predictions
from kwsbatch.evaluate.predict import default_report_dir, predict_manifest, read_predictions
from kwsbatch.evaluate.report import write_report, write_wakeword_report
from kwsbatch.evaluate.wakeword import WakewordEvaluation, evaluate_wakeword
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
    by: tuple[str, ...] | list[str] = (),
    min_group_clips: int = 10,
) -> tuple[Evaluation, list[GroupScores], Path]:
    """Score the model (default: the bundled one), or a label output given as predictions, on a labelled
    manifest, overall and per group of each `by` column; write the report to out_dir (default:
    reports/<manifest name>) and return it with the group scores and the folder."""
    check_group_columns(manifest, by, manifest_format=manifest_format)  # before minutes of scoring
    if predictions:
        table, classes, info = read_predictions(manifest, predictions, manifest_format=manifest_format)
    else:
        table, classes, info = predict_manifest(
            manifest, Path(model) if model else default_model_path(), device=device, config=config, reporter=reporter,
            manifest_format=manifest_format,
        )
    evaluation = evaluate_predictions(table, classes)
    groups = [score_groups(table, classes, column, min_clips=min_group_clips) for column in dict.fromkeys(by)]
    out_dir = Path(out_dir) if out_dir else default_report_dir(manifest)
    write_report(evaluation, table, out_dir, model_info=info, groups=groups)
    return evaluation, groups, out_dir


def evaluate_recordings(
    manifest: str | os.PathLike,
    wakeword: WakewordConfig = WakewordConfig(),
    *,
    out_dir: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    config: LabelConfig = LabelConfig(),
    manifest_format: str | None = None,
    reporter: Reporter | None = None,
) -> tuple[WakewordEvaluation, Path]:
    """Score a wake-word truth list of long recordings (path,start_s,end_s,label) with the model; write the
    report (threshold sweep, detections, DET curve) to out_dir and return it with the folder."""
    evaluation, info = evaluate_wakeword(
        manifest, Path(model) if model else default_model_path(), wakeword, device=device, batch_size=config.batch_size,
        jobs=config.jobs, reporter=reporter, manifest_format=manifest_format,
    )
    out_dir = Path(out_dir) if out_dir else default_report_dir(manifest)
    write_wakeword_report(evaluation, out_dir, model_info=info)
    return evaluation, out_dir
