"""Window mode's threshold and wake-word evaluation (wakeword.py) through the CLI, on long recordings of real speech.

The recordings are espeak-ng keywords laid over quiet noise at known times, so the truth is known:
one spoken keyword is left out of the truth list (a detection of it is a false accept), and one
listed keyword was never spoken (a miss at every threshold). The bundled model hears them.
"""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
from conftest import HAVE_ESPEAK, VOICES, run_main, speak

from kwsbatch.evaluate.wakeword import Event, match_events
from kwsbatch.label.windows import Detection

RATE = 16000
pytestmark = pytest.mark.skipif(not HAVE_ESPEAK, reason="needs espeak-ng to speak the keywords")


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def recording(path, seconds: float, words: list[tuple[float, str]], voice: int) -> list[tuple[float, float, str]]:
    """Write words spoken at the given seconds over quiet noise; return (start_s, end_s, word) of the speech."""
    audio = (0.003 * np.random.default_rng(voice).standard_normal(int(seconds * RATE))).astype(np.float32)
    spoken = []
    for at, word in words:
        clip = speak(word, *VOICES[voice])
        audio[int(at * RATE) : int(at * RATE) + len(clip)] += clip
        voiced = np.flatnonzero(np.abs(clip) > 0.02)
        spoken.append((round(at + voiced[0] / RATE, 3), round(at + (voiced[-1] + 1) / RATE, 3), word))
    sf.write(path, audio, RATE, subtype="PCM_16")
    return spoken


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Two recordings and their truth list: truth.csv (path,start_s,end_s,label)."""
    root = tmp_path_factory.mktemp("wakeword")
    spoken = recording(root / "kitchen.wav", 20.0, [(2, "yes"), (7, "no"), (12, "up"), (16, "stop")], voice=0)
    recording(root / "hall.wav", 12.0, [(3, "hello"), (8, "table")], voice=5)  # no keyword: the truth lists it without events
    truth = [(start, end, word) for start, end, word in spoken if word != "stop"]  # "stop" is spoken but not listed
    truth.append((18.2, 18.8, "down"))  # listed, never spoken
    with open(root / "truth.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "start_s", "end_s", "label"])
        writer.writerows(("kitchen.wav", start, end, word) for start, end, word in truth)
        writer.writerow(("hall.wav", "", "", "_background_"))
    return root


def test_window_mode_lists_only_detections_as_probable_as_the_threshold(recordings, tmp_path):
    def detections(*threshold: str) -> list[dict]:
        out = tmp_path / f"detections{threshold}.csv"
        run_main("label", recordings / "kitchen.wav", recordings / "hall.wav", "--window", "1", "--hop", "0.25", *threshold, "-o", out, "-q", check=True)
        return [row for row in read_csv(out) if row["label"]]

    every, sure = detections(), detections("--threshold", "0.9")
    assert any(float(r["confidence"]) < 0.9 for r in every)  # the windows around a word's edges
    assert sure and all(float(r["confidence"]) >= 0.9 for r in sure)
    # A detection at 0.9 lies within one at 0 (its windows are a subset), and every word is still found.
    for row in sure:
        assert any(o["path"] == row["path"] and o["label"] == row["label"] and float(o["start_s"]) <= float(row["start_s"])
                   and float(row["end_s"]) <= float(o["end_s"]) for o in every)
    assert {r["label"] for r in sure if r["path"].endswith("kitchen.wav")} == {"yes", "no", "up", "stop"}
    assert "--window: a window counts toward a detection only when" in run_main("label", "--help").stdout.replace("\n", " ")


def hand_count(detections: list[dict], truth: list[dict]) -> tuple[int, int]:
    """(false accepts, missed events) by the rule, counted one detection and one event at a time."""
    def overlaps(d, e):
        return d["label"] == e["label"] and float(d["start_s"]) < float(e["end_s"]) and float(e["start_s"]) < float(d["end_s"])

    events = [e for e in truth if e["start_s"]]
    false_accepts = sum(1 for d in detections if not any(d["path"].endswith(e["path"]) and overlaps(d, e) for e in events))
    missed = sum(1 for e in events if not any(d["path"].endswith(e["path"]) and overlaps(d, e) for d in detections))
    return false_accepts, missed


def test_wakeword_evaluation_counts_false_accepts_and_misses_as_label_finds_them(recordings, tmp_path):
    out = tmp_path / "report"
    result = run_main("evaluate", recordings / "truth.csv", "-o", out, "--target-fa-per-hour", "200")
    assert result.returncode == 0, result.stderr
    assert "Wake-word evaluation" in result.stdout and "miss rate" in result.stdout
    assert {p.name for p in out.iterdir()} >= {"wakeword_sweep.csv", "detections.csv", "report.json"}
    report = json.loads((out / "report.json").read_text())
    sweep = {float(r["threshold"]): r for r in read_csv(out / "wakeword_sweep.csv")}
    assert (report["n_recordings"], report["n_events"], report["events"]) == (2, 4, {"down": 1, "no": 1, "up": 1, "yes": 1})
    assert report["hours"] == pytest.approx(32 / 3600, abs=1e-6)
    assert (report["window_s"], report["hop_s"]) == (1.0, 0.5)

    truth = read_csv(recordings / "truth.csv")
    for threshold in (0.0, 0.5, 0.9):
        run_main("label", recordings / "kitchen.wav", recordings / "hall.wav", "--window", "1", "--threshold", str(threshold),
                "-o", tmp_path / f"at{threshold}.csv", "-q", check=True)
        detections = [r for r in read_csv(tmp_path / f"at{threshold}.csv") if r["label"]]
        false_accepts, missed = hand_count(detections, truth)
        row = sweep[threshold]
        assert (int(row["detections"]), int(row["false_accepts"]), int(row["missed"])) == (len(detections), false_accepts, missed)
        assert float(row["fa_per_hour"]) == pytest.approx(false_accepts / (32 / 3600))
        assert float(row["miss_rate"]) == pytest.approx(missed / 4)
        assert false_accepts >= 1 and missed >= 1  # the unlisted "stop" is heard; the listed "down" never is
    assert int(sweep[0.5]["missed"]) == 1  # at 0.5 the spoken keywords are found: only "down" is missed

    # The operating threshold: the lowest whose false accepts per hour are at most the target (200: one in 32 s).
    meeting = [t for t, r in sorted(sweep.items()) if float(r["fa_per_hour"]) <= 200]
    assert report["threshold"] == meeting[0]
    outcomes = read_csv(out / "detections.csv")
    assert [(r["label"], r["outcome"]) for r in outcomes if r["outcome"] != "hit"][-1:] == [("down", "miss")]
    assert {r["label"] for r in outcomes if r["outcome"] == "hit"} == {"yes", "no", "up"}


def test_det_curve_is_drawn_when_matplotlib_is_there(recordings, tmp_path):
    pytest.importorskip("matplotlib")
    run_main("evaluate", recordings / "truth.csv", "-o", tmp_path, "-q", check=True)
    assert (tmp_path / "det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "row, message",
    [
        ("kitchen.wav,,,yes", "truth.csv line 2: keyword 'yes' needs start_s and end_s (seconds into the recording)"),
        ("kitchen.wav,3,2,yes", "truth.csv line 2: need 0 <= start_s < end_s, got 3 and 2"),
        ("kitchen.wav,1,2,maybe", "truth.csv line 2: label 'maybe' is not one the model knows"),
        ("gone.wav,1,2,yes", "truth.csv line 2: file not found: gone.wav"),
    ],
)
def test_a_bad_truth_row_is_a_one_line_error(recordings, tmp_path, row, message):
    truth = tmp_path / "truth.csv"
    truth.write_text(f"path,start_s,end_s,label\n{row}\n")
    (tmp_path / "kitchen.wav").symlink_to(recordings / "kitchen.wav")
    result = run_main("evaluate", truth, "-o", tmp_path / "r")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {tmp_path / message}") and len(result.stderr.splitlines()) == 1


def test_clip_flags_and_wakeword_flags_do_not_mix(recordings, speech_corpus, tmp_path):
    assert run_main("evaluate", recordings / "truth.csv", "--min-accuracy", "0.9").returncode == 2
    result = run_main("evaluate", speech_corpus / "test.csv", "--target-fa-per-hour", "2")
    assert result.returncode == 2 and "--target-fa-per-hour: only for a truth list of long recordings" in result.stderr


def test_matching_rule_by_hand():
    events = [Event(1.0, 1.5, "yes"), Event(1.6, 2.0, "yes"), Event(5.0, 5.5, "no")]
    detections = [
        Detection(0.5, 1.8, "yes", 0.9),  # spans both "yes" events: each is detected
        Detection(1.7, 2.5, "yes", 0.8),  # a second detection on an event: neither a hit counted twice nor a false accept
        Detection(5.5, 6.0, "no", 0.9),  # only touches the "no" event: no match, a false accept
        Detection(5.0, 5.5, "yes", 0.9),  # overlaps "no" but is another keyword: a false accept
    ]
    detected, matched = match_events(detections, events)
    assert detected.tolist() == [True, True, False]
    assert matched.tolist() == [True, True, False, False]
