"""Fault injection, bad audio: every broken file gets a correct label or an error row naming the
problem, the rest of the batch is labelled, and training skips and counts what it cannot read."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_main, tone

EXIT_OK, EXIT_PARTIAL = 0, 3


def _wav_bytes(tmp: Path) -> bytes:
    sf.write(tmp, tone(440, 0.5), 16000, subtype="PCM_16")
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def _with_nonfinite(value: float):
    def write(path: Path) -> None:
        samples = tone(440, 0.25)
        samples[100] = value
        sf.write(path, samples, 16000, subtype="FLOAT")

    return write


def _no_decoder(path: Path) -> None:
    # An MP3 name on bytes no decoder accepts: read by descriptor, libsndfile judges the bytes, not the name.
    path.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff" * 500)


# name -> (how to write it, expected error (None: labelled), expected sample_rate, channels)
BROKEN = {
    "zero-byte.wav": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "truncated-header.wav": (lambda p: p.write_bytes(_wav_bytes(p)[:20]), "cannot decode audio ("),
    "random-bytes.wav": (lambda p: p.write_bytes(np.random.default_rng(7).bytes(3000)), "cannot decode audio (Format not recognised.)"),
    "text.wav": (lambda p: p.write_text("path,label\nyes.wav,yes\n" * 30), "cannot decode audio (Format not recognised.)"),
    "not-decodable.mp3": (_no_decoder, "cannot decode audio (Format not recognised.)"),
    "nan.wav": (_with_nonfinite(np.nan), "contains NaN or infinite samples"),
    "inf.wav": (_with_nonfinite(np.inf), "contains NaN or infinite samples"),
    "self-loop.wav": (lambda p: os.symlink(p.name, p), "symbolic link loop"),
    "dangling.wav": (lambda p: os.symlink("gone.wav", p), "symbolic link to a missing file"),
}

# name -> (how to write it, sample_rate and channels the output row reports)
ODD_BUT_VALID = {
    "truncated-data.wav": (lambda p: p.write_bytes(_wav_bytes(p)[: 44 + 2000]), 16000, 1),  # labelled from the samples present
    "all-zeros.wav": (lambda p: sf.write(p, np.zeros(8000, np.float32), 16000), 16000, 1),
    "one-sample.wav": (lambda p: sf.write(p, np.array([0.1], np.float32), 16000), 16000, 1),
    "u8.wav": (lambda p: sf.write(p, tone(440, 0.5), 16000, subtype="PCM_U8"), 16000, 1),
    "pcm24.wav": (lambda p: sf.write(p, tone(440, 0.5), 16000, subtype="PCM_24"), 16000, 1),
    "float32.wav": (lambda p: sf.write(p, tone(440, 0.5), 16000, subtype="FLOAT"), 16000, 1),
    "six-channels.wav": (lambda p: sf.write(p, np.tile(tone(440, 0.5)[:, None], (1, 6)), 16000), 16000, 6),
    "rate-8k.wav": (lambda p: sf.write(p, tone(440, 0.5, rate=8000), 8000), 8000, 1),
    "rate-192k.wav": (lambda p: sf.write(p, tone(440, 0.5, rate=192000), 192000), 192000, 1),
    "comma,name.wav": (lambda p: sf.write(p, tone(440, 0.5), 16000), 16000, 1),
    'quote"name\'s.wav': (lambda p: sf.write(p, tone(440, 0.5), 16000), 16000, 1),
    "new\nline.wav": (lambda p: sf.write(p, tone(440, 0.5), 16000), 16000, 1),
    "sp ace s.wav": (lambda p: sf.write(p, tone(440, 0.5), 16000), 16000, 1),
    "ünïcødé €.wav": (lambda p: sf.write(p, tone(440, 0.5), 16000), 16000, 1),
}


def read_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory) -> tuple[Path, dict[str, dict], subprocess.CompletedProcess]:
    """One label run over a folder holding every broken and odd file, a good file and a symlink loop."""
    root = tmp_path_factory.mktemp("bad-audio")
    folder = root / "in"
    folder.mkdir()
    sf.write(folder / "good.wav", tone(440, 0.5), 16000)
    for name, (write, *_rest) in {**BROKEN, **ODD_BUT_VALID}.items():
        write(folder / name)
    (folder / "loop").mkdir()
    os.symlink("..", folder / "loop" / "back")  # a folder loop: scanned once, not forever
    out = root / "out.csv"
    result = run_main("label", folder, "-o", out, "-j", "1", "-q")
    return folder, read_rows(out), result


def test_a_batch_with_broken_files_exits_3_and_has_one_row_per_file(labelled_folder):
    folder, rows, result = labelled_folder
    assert result.returncode == EXIT_PARTIAL, result.stderr
    expected = {str(folder / n) for n in ("good.wav", *BROKEN, *ODD_BUT_VALID)}
    assert set(rows) == expected  # the folder loop added no duplicates and did not hang the scan


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_file_gets_an_error_row_that_names_it_and_the_problem(labelled_folder, name):
    folder, rows, _ = labelled_folder
    row = rows[str(folder / name)]
    assert row["error"].startswith(f"{folder / name}: {BROKEN[name][1]}")
    assert row["label"] == "" and row["confidence"] == ""


@pytest.mark.parametrize("name", list(ODD_BUT_VALID))
def test_an_odd_but_valid_file_is_labelled_with_its_own_rate_and_channels(labelled_folder, name):
    folder, rows, _ = labelled_folder
    row = rows[str(folder / name)]
    _, rate, channels = ODD_BUT_VALID[name]
    assert row["error"] == ""
    assert row["label"] and 0 < float(row["confidence"]) <= 1
    assert (int(row["sample_rate"]), int(row["channels"])) == (rate, channels)


def test_the_same_clip_at_other_depths_and_rates_gets_the_good_files_label(labelled_folder):
    folder, rows, _ = labelled_folder
    good = rows[str(folder / "good.wav")]
    for name in ("pcm24.wav", "float32.wav", "six-channels.wav", "comma,name.wav", "new\nline.wav", "ünïcødé €.wav"):
        assert rows[str(folder / name)]["label"] == good["label"]
        assert float(rows[str(folder / name)]["confidence"]) == pytest.approx(float(good["confidence"]), abs=0.01)  # PCM_16 vs float quantisation


def test_a_file_deleted_between_listing_and_reading_gets_a_not_found_row(tmp_path):
    # A manifest is a listing made earlier: the file went away before label read it.
    sf.write(tmp_path / "kept.wav", tone(440, 0.5), 16000)
    sf.write(tmp_path / "deleted.wav", tone(440, 0.5), 16000)
    (tmp_path / "list.csv").write_text("path\nkept.wav\ndeleted.wav\n")
    (tmp_path / "deleted.wav").unlink()
    result = run_main("label", tmp_path / "list.csv", "-o", tmp_path / "out.csv", "-j", "1", "-q")
    assert result.returncode == EXIT_PARTIAL
    rows = read_rows(tmp_path / "out.csv")
    assert rows["deleted.wav"]["error"] == f"{tmp_path / 'deleted.wav'}: file not found"
    assert rows["kept.wav"]["label"]


def _can_drop_to_nobody() -> str | None:
    """Why reads cannot be denied here, or None when they can."""
    if os.geteuid() != 0:
        return None
    if shutil.which("setpriv") is None:
        return "running as root, where chmod 000 does not deny reads, and setpriv is missing to run as another user"
    probe = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", "import kwsbatch"],
        capture_output=True, env={**os.environ}, check=False,
    )
    if probe.returncode != 0:
        return f"running as root, and user nobody cannot import kwsbatch: {probe.stderr.decode()[-200:]}"
    return None


def test_permission_denied_gets_an_error_row_and_the_rest_is_labelled(request):
    # Root reads files whatever their mode, so as root the run drops to user nobody (uid 65534).
    reason = _can_drop_to_nobody()
    if reason:
        pytest.skip(reason)
    tmp_path = Path(tempfile.mkdtemp(prefix="kws-denied-"))  # pytest's own folders are closed to other users
    request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "readable.wav", tone(440, 0.5), 16000)
    sf.write(folder / "locked.wav", tone(440, 0.5), 16000)
    (folder / "locked.wav").chmod(0)
    closed = tmp_path / "closed"  # a file named on the command line, in a folder we may not search
    closed.mkdir()
    sf.write(closed / "hidden.wav", tone(440, 0.5), 16000)
    closed.chmod(0o700)
    for p in (tmp_path, folder):
        p.chmod(0o777)
    command = [sys.executable, "-m", "kwsbatch", "label", str(folder), str(closed / "hidden.wav"), "-o", str(tmp_path / "out.csv"), "-j", "1", "-q"]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == EXIT_PARTIAL, result.stderr
    rows = read_rows(tmp_path / "out.csv")
    assert rows[str(folder / "locked.wav")]["error"] == f"{folder / 'locked.wav'}: permission denied"
    assert rows[str(closed / "hidden.wav")]["error"] == f"{closed / 'hidden.wav'}: permission denied"
    assert rows[str(folder / "readable.wav")]["label"]


# --- evaluate and train -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_manifest(tmp_path_factory) -> Path:
    """Two tone classes, 6 clips each, plus three unreadable clips labelled like the rest."""
    root = tmp_path_factory.mktemp("mixed")
    lines = ["path,label"]
    for i in range(6):
        for label, freq in (("yes", 300), ("no", 2500)):
            sf.write(root / f"{label}{i}.wav", tone(freq * (1 + 0.02 * i), 0.3), 16000)
            lines.append(f"{label}{i}.wav,{label}")
    (root / "empty.wav").write_bytes(b"")
    (root / "junk.wav").write_bytes(np.random.default_rng(3).bytes(2000))
    _with_nonfinite(np.nan)(root / "nan.wav")
    lines += ["empty.wav,yes", "junk.wav,no", "nan.wav,yes"]
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return root / "m.csv"


def test_evaluate_reports_unreadable_clips_as_failed_rows_and_scores_the_rest(mixed_manifest, tmp_path):
    result = run_main("evaluate", mixed_manifest, "-o", tmp_path / "report", "-q")
    assert result.returncode == EXIT_OK, result.stderr
    report = (tmp_path / "report").iterdir()
    predictions = next(p for p in report if p.name == "predictions.csv")
    rows = read_rows(predictions)
    assert len(rows) == 15
    failed = {path for path, row in rows.items() if row["error"]}
    assert failed == {"empty.wav", "junk.wav", "nan.wav"}
    assert rows["nan.wav"]["error"].endswith("nan.wav: contains NaN or infinite samples")


@pytest.mark.slow
def test_training_skips_and_counts_unreadable_clips_with_a_warning(mixed_manifest, tmp_path):
    result = run_main(
        "train", mixed_manifest, "--val", mixed_manifest, "-o", tmp_path / "run", "--epochs", "1",
        "--hidden", "8", "--layers", "1", "--batch-size", "8", "-q",
    )
    assert result.returncode == EXIT_OK, result.stderr
    for name in ("empty.wav", "junk.wav", "nan.wav"):
        assert f"skipping {mixed_manifest} line" in result.stderr and name in result.stderr
    # Each unreadable clip is counted once per set it is in (train and val here).
    assert "skipped 6 unreadable clips" in result.stderr
    info = run_main("info", tmp_path / "run" / "best.pt", "--json", check=True)
    assert '"skipped_unreadable": 6' in info.stdout
