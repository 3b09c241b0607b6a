"""windows.py: windows read in blocks equal slices of the whole file; detections merge per keyword."""

import numpy as np
import pytest
import soundfile as sf
from conftest import flac_claiming

from kwsbatch.classes import is_background
from kwsbatch.errors import AudioError
from kwsbatch.files.windowing import WindowConfig
from kwsbatch.files.windows import MAX_FRAMES_PER_BYTE, WindowReader, plan_pieces
from kwsbatch.label.windows import DetectionMerger, merge_detections

CLASSES = ("_silence_", "_unknown_", "no", "yes")


def probs(label: str, confidence: float = 0.9) -> np.ndarray:
    p = np.full(len(CLASSES), (1 - confidence) / (len(CLASSES) - 1), dtype=np.float32)
    p[CLASSES.index(label)] = confidence
    return p


@pytest.mark.parametrize("block_s", [60.0, 0.37, 0.01])
@pytest.mark.parametrize("seconds, window, hop", [(5.3, 1.0, 0.5), (5.0, 1.0, 0.5), (3.0, 0.75, 0.75), (0.4, 1.0, 0.25)])
def test_windows_equal_slices_of_the_whole_file_whatever_the_block_size(tmp_path, block_s, seconds, window, hop):
    rate = 8000
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, int(seconds * rate)).astype(np.float32)
    sf.write(tmp_path / "a.wav", audio, rate, subtype="FLOAT")
    reader = WindowReader(tmp_path / "a.wav", WindowConfig(window, hop), block_s=block_s)
    windows = list(reader)
    w, h, n = round(window * rate), round(hop * rate), len(audio)
    grid = [(s, s + w) for s in range(0, n - w + 1, h)]
    if not grid:
        expected = [(0, n)]  # shorter than one window: the whole file
    elif grid[-1][1] < n:
        expected = [*grid, (n - w, n)]  # the uncovered tail gets an end-aligned window
    else:
        expected = grid
    assert [(s, e) for s, e, _ in windows] == expected
    for s, e, samples in windows:
        np.testing.assert_array_equal(samples, audio[s:e])
    assert (reader.frames, reader.sample_rate, reader.channels) == (n, rate, 1)
    assert reader.duration_s == pytest.approx(seconds, abs=1 / rate)


@pytest.mark.parametrize("seconds, window, hop", [(5.3, 1.0, 0.5), (5.0, 1.0, 0.5), (3.0, 0.75, 0.75), (0.4, 1.0, 0.25), (2.2, 1.0, 0.3)])
def test_pieces_read_apart_give_the_windows_of_the_whole_file(tmp_path, seconds, window, hop):
    rate = 8000
    audio = np.random.default_rng(2).uniform(-0.5, 0.5, int(seconds * rate)).astype(np.float32)
    sf.write(tmp_path / "a.wav", audio, rate, subtype="FLOAT")
    config = WindowConfig(window, hop)
    whole = [(s, e) for s, e, _ in WindowReader(tmp_path / "a.wav", config)]
    for block_s in (0.5, 1.0, 60.0):  # pieces of about block_s seconds, cut from the header
        pieces = plan_pieces(tmp_path / "a.wav", config, block_s=block_s)
        assert pieces[-1][1] is None and all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
        readers = [WindowReader(tmp_path / "a.wav", config, first=first, stop=stop) for first, stop in pieces]
        windows = [w for reader in readers for w in reader]
        assert [(s, e) for s, e, _ in windows] == whole
        for s, e, samples in windows:
            np.testing.assert_array_equal(samples, audio[s:e])
        # The piece the file ends in knows its length; the others stopped before the end.
        assert [reader.frames for reader in readers] == [None] * (len(readers) - 1) + [len(audio)]


def test_a_file_shorter_than_planned_loses_no_window(tmp_path):
    """Pieces planned past the file's end (it was replaced, or its header promised more) find nothing; the piece it ends in reads the tail."""
    rate = 8000
    audio = np.random.default_rng(3).uniform(-0.5, 0.5, 3 * rate + 100).astype(np.float32)
    sf.write(tmp_path / "a.wav", audio, rate, subtype="FLOAT")
    config = WindowConfig(1.0, 0.5)
    whole = [(s, e) for s, e, _ in WindowReader(tmp_path / "a.wav", config)]
    # As plan_pieces cuts a 10 s file into 1 s pieces (two windows each).
    pieces = [(k, k + 2) for k in range(0, 18, 2)] + [(18, None)]
    readers = [WindowReader(tmp_path / "a.wav", config, first=first, stop=stop) for first, stop in pieces[:5]]
    assert [(s, e) for reader in readers for s, e, _ in reader] == whole
    assert [reader.frames for reader in readers] == [None, None, len(audio), len(audio), None]  # the 4th starts in the last 100 frames


def test_a_header_claiming_billions_of_frames_is_planned_by_the_file_size(tmp_path):
    """A FLAC whose STREAMINFO claims 2^36 frames (49 days at 16 kHz) holds one second: planned
    from the header alone it would be 71,583 pieces of a minute, each opening the file to find nothing."""
    flac_claiming(tmp_path / "a.flac", 2**36 - 1)
    pieces = plan_pieces(tmp_path / "a.flac", WindowConfig(1.0, 0.5))
    believed_s = (tmp_path / "a.flac").stat().st_size * MAX_FRAMES_PER_BYTE / 16000  # the file's size, at most, in seconds
    assert 0 <= len(pieces) - believed_s / 60 < 1 and len(pieces) < 300
    assert pieces[0] == (0, 120) and pieces[-1][1] is None  # a minute of windows each; the last reads on to the end


def test_stereo_windows_are_mixed_to_mono(tmp_path):
    left = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, -left / 2], axis=1), 16000, subtype="FLOAT")
    (_, _, samples), *_ = WindowReader(tmp_path / "s.wav", WindowConfig(0.5, 0.5))
    np.testing.assert_allclose(samples, left[:8000] / 4, atol=1e-7)


def test_an_empty_file_is_an_error_naming_it(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav: contains no samples"):
        list(WindowReader(tmp_path / "empty.wav", WindowConfig(1.0, 0.5)))


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(AudioError, match="gone.wav: file not found"):
        list(WindowReader(tmp_path / "gone.wav", WindowConfig(1.0, 0.5)))


@pytest.mark.parametrize("window, hop", [(0, 0), (1.0, 0), (1.0, 1.5), (-1, 0.5)])
def test_window_settings_are_checked(window, hop):
    with pytest.raises(ValueError):
        WindowConfig(window, hop)


def test_overlapping_windows_of_a_keyword_merge_and_keep_the_best_confidence():
    merger = DetectionMerger(CLASSES, sample_rate=10)
    for start, label, confidence in [(0, "_silence_", 0.9), (5, "yes", 0.6), (10, "yes", 0.8), (15, "yes", 0.7), (20, "_unknown_", 0.9)]:
        merger.add(start, start + 10, probs(label, confidence))
    [detection] = merger.detections()
    assert (detection.start_s, detection.end_s, detection.label) == (0.5, 2.5, "yes")
    assert detection.confidence == pytest.approx(0.8)


def test_windows_that_only_touch_are_separate_detections():
    merger = DetectionMerger(CLASSES, sample_rate=10)
    merger.add(0, 10, probs("yes"))
    merger.add(10, 20, probs("yes"))
    assert [(d.start_s, d.end_s) for d in merger.detections()] == [(0.0, 1.0), (1.0, 2.0)]


def test_keywords_are_merged_independently_and_listed_by_start_then_label():
    merger = DetectionMerger(CLASSES, sample_rate=2)
    for start, label in [(0, "yes"), (2, "no"), (3, "yes"), (20, "yes"), (20, "no")]:
        merger.add(start, start + 4, probs(label))
    got = [(d.start_s, d.end_s, d.label) for d in merger.detections()]
    assert got == [(0, 3.5, "yes"), (1, 3, "no"), (10, 12, "no"), (10, 12, "yes")]


def test_only_background_windows_make_no_detection():
    merger = DetectionMerger(CLASSES, sample_rate=1)
    merger.add(0, 1, probs("_silence_"))
    merger.add(1, 2, probs("_unknown_"))
    assert merger.detections() == []


def test_background_classes_are_the_underscored_names():
    assert [c for c in CLASSES if is_background(c)] == ["_silence_", "_unknown_"]
    assert not is_background("_") and not is_background("up")


def test_below_the_threshold_a_window_counts_for_nothing():
    merger = DetectionMerger(CLASSES, sample_rate=10, threshold=0.7)
    # A keyword window at 0.6 between two at 0.8 and 0.9: it neither extends one nor joins them.
    for start, confidence in [(0, 0.8), (5, 0.6), (10, 0.9), (30, 0.65)]:
        merger.add(start, start + 10, probs("yes", confidence))
    got = [(d.start_s, d.end_s, d.label, round(d.confidence, 6)) for d in merger.detections()]
    assert got == [(0.0, 1.0, "yes", 0.8), (1.0, 2.0, "yes", 0.9)]
    # The same windows without a threshold: one detection spanning the first three, and the fourth.
    assert [(d.start_s, d.end_s) for d in merge_detections(merger.windows(), CLASSES)] == [(0.0, 2.0), (3.0, 4.0)]


def test_a_threshold_at_a_windows_own_probability_keeps_it():
    p = probs("no", 0.7)
    merger = DetectionMerger(CLASSES, sample_rate=1, threshold=float(p[CLASSES.index("no")]))
    merger.add(0, 1, p)
    assert [d.label for d in merger.detections()] == ["no"]


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_window_threshold_is_a_probability(threshold):
    with pytest.raises(ValueError, match="threshold: must be a probability"):
        WindowConfig(1.0, 0.5, threshold)
