"""pipeline.py: loader workers, length-sorted batches, long recordings in pieces, and results that none of that changes."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import soundfile as sf
from conftest import REPO, tone

from kwsbatch.files.loader import collate
from kwsbatch.files.manifest import ManifestRow
from kwsbatch.files.windowing import WindowConfig
from kwsbatch.files.windows import plan_pieces
from kwsbatch.label.config import LabelConfig
from kwsbatch.label.pipeline import score_files
from kwsbatch.model.checkpoint import default_model_path, load_checkpoint
from kwsbatch.model.scorer import Scorer

SAMPLES = REPO / "kwsbatch" / "assets" / "samples"


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    model = default_model_path()
    checkpoint = load_checkpoint(model)
    return Scorer(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def mixed_clips(tmp_path_factory) -> list[Path]:
    """Speech samples and tones of 0.2-2 s, mono 16 kHz and stereo 44.1 kHz, WAV and FLAC."""
    root = tmp_path_factory.mktemp("mixed")
    paths = sorted(SAMPLES.glob("*.wav")) + sorted(SAMPLES.glob("*.flac"))
    rng = np.random.default_rng(0)
    for i in range(24):
        rate = 44100 if i % 3 == 0 else 16000
        audio = tone(rng.uniform(200, 3000), rng.uniform(0.2, 2.0), rate=rate)
        if rate == 44100:
            audio = np.stack([audio, audio * 0.5], axis=1)
        path = root / f"tone{i:02d}.{'flac' if i % 2 else 'wav'}"
        sf.write(path, audio, rate)
        paths.append(path)
    return paths


def rows_for(paths) -> list[ManifestRow]:
    return [ManifestRow(str(p), str(p), Path(p)) for p in paths]


def run(scorer, paths, config, *, ordered=True) -> list[tuple[ManifestRow, object]]:
    return [(row, result) for task, results in score_files(scorer, rows_for(paths), config, ordered=ordered) for row, result in zip(task, results)]


def test_results_do_not_depend_on_workers_batch_size_or_sorting(scorer, mixed_clips):
    one_by_one = run(scorer, mixed_clips, LabelConfig(batch_size=1, jobs=1, sort_window=1))
    batched = run(scorer, mixed_clips, LabelConfig(batch_size=7, jobs=3, sort_window=3), ordered=False)
    by_path = {row.path: result for row, result in batched}
    assert len(by_path) == len(batched) == len(one_by_one) == len(mixed_clips)
    for row, alone in one_by_one:
        together = by_path[row.path]
        assert not alone.error and not together.error
        np.testing.assert_allclose(together.probabilities, alone.probabilities, atol=1e-5)
        assert (together.duration_s, together.sample_rate, together.channels) == (alone.duration_s, alone.sample_rate, alone.channels)


def test_ordered_results_follow_the_input_and_unordered_ones_cover_it_once(scorer, mixed_clips):
    config = LabelConfig(batch_size=2, jobs=2, sort_window=2)
    assert [row.path for row, _ in run(scorer, mixed_clips, config)] == [str(p) for p in mixed_clips]
    unordered = [row.path for row, _ in run(scorer, mixed_clips, config, ordered=False)]
    assert sorted(unordered) == sorted(str(p) for p in mixed_clips)


def test_a_file_that_cannot_be_read_spoils_only_its_own_result(scorer, tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wave file")
    sf.write(tmp_path / "long.wav", np.zeros(16000 * 3, dtype=np.float32), 16000)
    paths = [SAMPLES / "yes_0.wav", tmp_path / "broken.wav", tmp_path / "missing.wav", tmp_path / "long.wav", SAMPLES / "no_0.wav"]
    results = [result for _, result in run(scorer, paths, LabelConfig(batch_size=4, jobs=2, max_seconds=2.0))]
    assert [bool(r.error) for r in results] == [False, True, True, True, False]
    assert "broken.wav: cannot decode audio" in results[1].error
    assert "missing.wav: file not found" in results[2].error
    assert "3.0 s is longer than the 2 s limit" in results[3].error and "--window" in results[3].error
    assert [scorer.classes[r.probabilities.argmax()] for r in (results[0], results[4])] == ["yes", "no"]


def test_window_mode_finds_keywords_where_they_are_spoken(scorer, tmp_path):
    rate = 16000
    audio = np.zeros(rate * 20, dtype=np.float32)
    for second, word in [(3, "yes"), (12, "stop")]:
        clip, _ = sf.read(SAMPLES / f"{word}_0.wav", dtype="float32")
        audio[second * rate : second * rate + len(clip)] = clip
    sf.write(tmp_path / "recording.flac", audio, rate)
    [(_, result)] = run(scorer, [tmp_path / "recording.flac"], LabelConfig(batch_size=8, jobs=2, window=WindowConfig(1.0, 0.25)))
    assert not result.error and result.duration_s == 20.0
    for second, word in [(3, "yes"), (12, "stop")]:
        # A detection of the word covers the second it was spoken in.
        assert any(d.label == word and d.start_s <= second + 0.25 and d.end_s >= second + 0.75 for d in result.detections)
    # Silence far from both words gives no detection (what a word's tail sounds like is the model's business).
    assert all(2 <= d.start_s <= 4 or 11 <= d.start_s <= 14 for d in result.detections)


def test_a_long_recording_is_read_in_pieces_that_give_the_result_of_one_reading(scorer, tmp_path):
    """A 3-minute recording is cut into 1-minute pieces that the workers read apart; its detections are those of one pass."""
    rate = 16000
    audio = np.zeros(rate * 180 + 5000, dtype=np.float32)  # a tail past the last grid window
    for second, word in [(30, "yes"), (59, "stop"), (150, "no")]:  # "stop" straddles the first cut
        clip, _ = sf.read(SAMPLES / f"{word}_0.wav", dtype="float32")
        audio[second * rate : second * rate + len(clip)] = clip
    sf.write(tmp_path / "recording.flac", audio, rate)
    paths = [tmp_path / "recording.flac", *[SAMPLES / f"{w}_0.wav" for w in ("yes", "no", "up")]]
    window = WindowConfig(1.0, 0.5)
    assert len(plan_pieces(tmp_path / "recording.flac", window)) == 3
    pieces = run(scorer, paths, LabelConfig(batch_size=8, jobs=2, sort_window=2, window=window), ordered=False)
    whole = run(scorer, paths, LabelConfig(batch_size=8, jobs=1, sort_window=2, window=window), ordered=True)
    by_path = {row.path: result for row, result in pieces}
    assert len(by_path) == len(pieces) == len(paths)
    for row, result in whole:
        assert (by_path[row.path].detections, by_path[row.path].duration_s) == (result.detections, result.duration_s)
    recording = by_path[str(tmp_path / "recording.flac")]
    assert recording.duration_s == len(audio) / rate
    for second, word in [(30, "yes"), (59, "stop"), (150, "no")]:
        assert any(d.label == word and d.start_s <= second + 0.25 and d.end_s >= second + 0.75 for d in recording.detections)


def test_one_worker_two_workers_and_no_worker_give_the_same_numbers(scorer, mixed_clips, tmp_path):
    """The same batches whoever reads them, so the same numbers, not merely close ones; errors and window mode too."""
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wave file")
    rate = 16000
    recording = np.zeros(rate * 6, dtype=np.float32)
    recording[2 * rate : 3 * rate] = sf.read(SAMPLES / "yes_0.wav", dtype="float32")[0][:rate]
    sf.write(tmp_path / "recording.wav", recording, rate)
    clip_mode = (LabelConfig(batch_size=5, jobs=1), [*mixed_clips, tmp_path / "broken.wav"])
    window_mode = (LabelConfig(batch_size=4, jobs=1, window=WindowConfig(1.0, 0.5)), [tmp_path / "recording.wav", *mixed_clips[:4]])
    for config, paths in (clip_mode, window_mode):
        one = run(scorer, paths, config)
        two = run(scorer, paths, replace(config, jobs=2))
        here = [(row, result) for rows, results in score_files(scorer, rows_for(paths), config, ordered=True, in_process=True)
                for row, result in zip(rows, results)]
        for other in (two, here):
            assert [row.path for row, _ in other] == [row.path for row, _ in one] == [str(p) for p in paths]
            for (_, a), (_, b) in zip(one, other):
                assert (a.error, a.duration_s, a.sample_rate, a.channels, a.detections) == (b.error, b.duration_s, b.sample_rate, b.channels, b.detections)
                assert (a.probabilities is None and b.probabilities is None) or np.array_equal(a.probabilities, b.probabilities)
        if config.window is None:
            assert "broken.wav: cannot decode audio" in two[-1][1].error
        else:
            assert any(d.label == "yes" for d in two[0][1].detections)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        LabelConfig(batch_size=0)
    with pytest.raises(ValueError):
        LabelConfig(jobs=-1)


def test_batches_come_longest_first_so_the_model_packs_them_without_a_sort():
    sizes = [300, 900, 50, 900, 420, 700, 10]
    segments = [(i, 0, n, torch.ones(n)) for i, n in enumerate(sizes)]
    batches = collate(segments, batch_size=3, min_samples=100, shared=False)
    lengths = torch.cat([b.lengths for b in batches]).tolist()
    assert lengths == [900, 900, 700, 420, 300, 100, 100]  # ties keep their input order; short clips pad to 100
    assert [p for b in batches for p in b.pieces] == [1, 3, 5, 4, 0, 2, 6]
