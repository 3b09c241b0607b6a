"""Evaluation: a labelled manifest, scored by a model or against an existing predictions CSV."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from kwsbatch.errors import KwsError, ManifestError
from kwsbatch.files.manifest import check_known_labels, read_manifest
from kwsbatch.files.output import OutputPaths, read_label_output, table_folder
from kwsbatch.label.config import LabelConfig
from kwsbatch.label.pipeline import score_files
from kwsbatch.label.rows import RowLayout, output_row_key, row_key
from kwsbatch.model.checkpoint import load_checkpoint
from kwsbatch.model.scorer import Scorer
from kwsbatch.progress import Reporter


def predict_manifest(
    manifest: str | os.PathLike,
    model: str | os.PathLike,
    *,
    device: str = "auto",
    config: LabelConfig = LabelConfig(),
    reporter: Reporter | None = None,
    manifest_format: str | None = None,
) -> tuple[pd.DataFrame, tuple[str, ...], dict]:
    """Label every row of a labelled manifest (of a Speech Commands tree, its test clips): (predictions, classes, model info)."""
    reporter = reporter or Reporter()
    rows = read_manifest(manifest, require_label=True, manifest_format=manifest_format, split="test")
    checkpoint = load_checkpoint(model)
    check_known_labels(rows, checkpoint.classes)
    scorer = Scorer(checkpoint, device=device)
    layout = RowLayout(checkpoint.classes, model_id=scorer.model_id)
    extras = list(dict.fromkeys(k for row in rows for k in row.extras))
    columns = layout.columns(["label", *extras])
    results = []
    reporter.start("evaluating", len(rows))
    for task, task_results in score_files(scorer, rows, config, ordered=True):
        for row, result in zip(task, task_results):
            (fields,) = layout.result_fields(result)
            results.append({**layout.input_fields(row), **fields})
        reporter.advance(len(task))
    reporter.stop()
    # As objects first: a numeric column with a failed row's gap refuses "" in future pandas.
    predictions = pd.DataFrame(results).reindex(columns=columns).astype(object).fillna("")
    info = {"model": str(model), "model_id": scorer.model_id, "classes": list(checkpoint.classes), **checkpoint.provenance}
    return _typed(predictions, checkpoint.classes), checkpoint.classes, info


def read_predictions(
    manifest: str | os.PathLike, predictions_csv: str | os.PathLike, *, manifest_format: str | None = None
) -> tuple[pd.DataFrame, tuple[str, ...], dict]:
    """Join a labelled manifest with predictions written earlier by `kwsbatch label` (CSV, JSON lines or Parquet)."""
    rows = read_manifest(manifest, require_label=True, check_exists=False, manifest_format=manifest_format, split="test")
    try:
        table = read_label_output(predictions_csv)
    except FileNotFoundError:
        raise KwsError(f"{predictions_csv}: predictions file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise KwsError(f"{predictions_csv}: not a readable predictions CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in ("path", "label") if c not in table.columns]
    classes = tuple(c[2:] for c in table.columns if c.startswith("p_"))
    if missing or not classes:
        raise KwsError(f"{predictions_csv}: not a kwsbatch predictions CSV (needs path, label and p_<class> columns)")
    # A file is matched by where it is: the output's paths resolve against its own folder, the
    # manifest's against its. Segments of one file (NeMo's offset and duration, carried into the
    # output) are rows of their own: matched as a rerun of `label` matches them.
    written = OutputPaths(table_folder(predictions_csv))
    records = table.to_dict("records")
    # A key twice: its last row. Outputs written before paths were relative to the output hold the manifest's paths as written.
    by_key = {output_row_key({**record, "path": written.resolve(record["path"])}): record for record in records}
    by_path_as_written = {output_row_key(record): record for record in records}
    check_known_labels(rows, classes)
    layout = RowLayout(classes)
    records = []
    for row in rows:
        record = by_key.get(row_key(row, os.path.abspath(row.audio_path))) or by_path_as_written.get(row_key(row, row.path))
        if record is None:
            segment = f" (offset {row.offset_s:g} s)" if row.offset_s is not None else ""
            raise ManifestError(f"{row.source}: no prediction for {row.path}{segment} in {predictions_csv}")
        # The manifest's path, truth and other columns (speaker, say), as a model run would carry them.
        records.append({**record, **layout.input_fields(row)})
    predictions = pd.DataFrame(records)
    predictions = predictions[["path", "true_label", *[c for c in predictions.columns if c not in ("path", "true_label")]]]
    if "error" not in predictions.columns:
        predictions["error"] = ""
    info = {"predictions": str(predictions_csv), "classes": list(classes)}
    return _typed(predictions, classes), classes, info


def _typed(predictions: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """Probabilities and confidence as floats (NaN for failed rows), everything else as text."""
    predictions = predictions.copy()
    for column in ["confidence", *(f"p_{c}" for c in classes)]:
        predictions[column] = pd.to_numeric(predictions[column], errors="coerce")
    predictions["error"] = predictions["error"].fillna("").astype(str)
    predictions["label"] = predictions["label"].fillna("").astype(str)
    return predictions


def default_report_dir(manifest: str | os.PathLike) -> Path:
    return Path("reports") / Path(manifest).stem
