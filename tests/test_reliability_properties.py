"""Property tests (hypothesis): manifests round-trip whatever text their cells hold, and a clip's
probabilities do not depend on the batch it is scored in."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kwsbatch.files.manifest import iter_manifest
from kwsbatch.model.checkpoint import default_model_path, load_checkpoint
from kwsbatch.model.scorer import Scorer

# Cell text as people write it: commas, quotes, tabs, newlines, non-ASCII; never NUL (csv cannot hold it)
# and no surrounding blanks on path and label, which kwsbatch strips.
CELL = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
STRIPPED = CELL.map(str.strip).filter(bool)
ROW = st.fixed_dictionaries({"path": STRIPPED, "label": STRIPPED, "speaker": CELL})


def _write(folder: Path, kind: str, rows: list[dict]) -> Path:
    path = folder / f"m.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker"], delimiter="\t" if kind == "tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=6))
def test_manifest_rows_round_trip_through_every_delimited_dialect(kind, rows):
    with tempfile.TemporaryDirectory() as folder:
        manifest = _write(Path(folder), kind, rows)
        read = list(iter_manifest(manifest, require_label=True))
    assert [(r.path, r.label, r.extras) for r in read] == [(r["path"], r["label"], {"speaker": r["speaker"]}) for r in rows]
    assert all(r.audio_path == Path(folder) / r.path or Path(r.path).is_absolute() for r in read)


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(load_checkpoint(default_model_path()), device="cpu")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=16000), min_size=1, max_size=8),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_a_clips_probabilities_do_not_depend_on_the_batch_it_is_scored_in(scorer, lengths, seed):
    rng = np.random.default_rng(seed)
    waves = [torch.from_numpy((0.3 * rng.standard_normal(n)).astype(np.float32)) for n in lengths]
    together = scorer.probabilities(waves)
    alone = np.concatenate([scorer.probabilities([w]) for w in waves])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
