"""job.py through the real CLI: incremental reruns, the journal under SIGKILL, the output lock, window mode."""

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, interruptible, run_main, tone

from kwsbatch.files.lock import output_lock

SAMPLES = REPO / "kwsbatch" / "assets" / "samples"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_LOCKED, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 75, 130, 143


def make_corpus(root: Path, n: int, *, first: int = 0, seconds: tuple[float, float] = (0.3, 0.9)) -> list[Path]:
    """n tone clips of mixed lengths under root, 50 to a subfolder, named in scan order."""
    rng = np.random.default_rng(first)
    paths = []
    for i in range(first, first + n):
        path = root / f"part{i // 50:03d}" / f"clip{i:05d}.{'flac' if i % 2 else 'wav'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, tone(rng.uniform(150, 3000), rng.uniform(*seconds)), 16000)
        paths.append(path)
    return paths


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def label(*args, **kwargs) -> subprocess.CompletedProcess:
    return run_main("label", *args, **kwargs)


def test_a_rerun_over_the_same_files_labels_nothing_and_writes_the_same_bytes(tmp_path):
    paths = make_corpus(tmp_path / "corpus", 30)
    out = tmp_path / "out.csv"
    first = label(tmp_path / "corpus", "-o", out)
    assert first.returncode == EXIT_OK, first.stderr
    assert "labelled 30 new or changed files (0 failed), skipped 0 unchanged" in first.stderr
    rows = read_rows(out)
    assert [r["path"] for r in rows] == [str(p) for p in paths]  # input (scan) order
    for row, path in zip(rows, paths):
        st = os.stat(path)
        assert (int(row["file_size"]), int(row["file_mtime_ns"])) == (st.st_size, st.st_mtime_ns)
        assert row["label"] and not row["error"]
    before = out.read_bytes()
    second = label(tmp_path / "corpus", "-o", out)
    assert second.returncode == EXIT_OK
    assert "labelled 0 new or changed files (0 failed), skipped 30 unchanged" in second.stderr
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out.csv"]  # no journal or lock file left


def test_a_grown_corpus_labels_only_new_and_changed_files_and_keeps_earlier_rows(tmp_path):
    corpus = tmp_path / "corpus"
    paths = make_corpus(corpus, 30)
    out = tmp_path / "out.csv"
    label(corpus, "-o", out, check=True)
    earlier = {r["path"]: r for r in read_rows(out)}
    added = make_corpus(corpus, 5, first=30)
    changed, deleted = paths[3], paths[7]
    sf.write(changed, tone(440, 1.3), 16000)
    deleted.unlink()
    result = label(corpus, "-o", out)
    assert result.returncode == EXIT_OK, result.stderr
    assert "labelled 6 new or changed files (0 failed), skipped 28 unchanged" in result.stderr
    rows = read_rows(out)
    assert [r["path"] for r in rows] == [str(p) for p in paths + added if p != deleted]
    for row in rows:
        if row["path"] in earlier and row["path"] != str(changed):
            assert row == earlier[row["path"]]  # kept as it was, not relabelled
    [changed_row] = [r for r in rows if r["path"] == str(changed)]
    assert changed_row["duration_s"] == "1.300" and int(changed_row["file_size"]) == os.stat(changed).st_size
    forced = label(corpus, "-o", out, "--force")
    assert "labelled 34 new or changed files (0 failed), skipped 0 unchanged" in forced.stderr


def test_failed_files_get_an_error_row_and_are_retried_on_the_next_run(tmp_path):
    corpus = tmp_path / "corpus"
    make_corpus(corpus, 4)
    broken = corpus / "part000" / "broken.wav"
    broken.write_bytes(b"RIFF, but not audio")
    out = tmp_path / "out.csv"
    first = label(corpus, "-o", out)
    assert first.returncode == EXIT_PARTIAL
    assert "labelled 5 new or changed files (1 failed)" in first.stderr
    [row] = [r for r in read_rows(out) if r["path"] == str(broken)]
    assert "broken.wav: cannot decode audio" in row["error"] and row["label"] == ""
    again = label(corpus, "-o", out)
    assert again.returncode == EXIT_PARTIAL
    assert "labelled 1 new or changed files (1 failed), skipped 4 unchanged" in again.stderr
    sf.write(broken, tone(300, 0.5), 16000)
    fixed = label(corpus, "-o", out)
    assert fixed.returncode == EXIT_OK
    assert "labelled 1 new or changed files (0 failed), skipped 4 unchanged" in fixed.stderr


def test_a_run_that_fails_before_labelling_a_file_leaves_no_journal_or_lock(tmp_path):
    make_corpus(tmp_path / "corpus", 2)
    manifest = tmp_path / "corpus" / "clips.csv"
    manifest.write_text("path,label\n,yes\npart000/clip00000.wav,no\n")  # line 2: no path
    result = label(manifest, "-o", tmp_path / "out.csv")
    assert result.returncode == EXIT_ERROR
    assert result.stderr == f"error: {manifest} line 2: empty path\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_an_output_path_holding_some_other_file_is_not_replaced_without_force(tmp_path):
    make_corpus(tmp_path / "corpus", 2)
    out = tmp_path / "notes.csv"
    out.write_text("name,phone\nalice,123\n")
    result = label(tmp_path / "corpus", "-o", out)
    assert result.returncode == EXIT_ERROR
    assert result.stderr.strip() == f"error: {out}: exists and is not the output of `kwsbatch label`; refusing to replace it (move it away, or use --force to overwrite it)"
    assert out.read_text() == "name,phone\nalice,123\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "notes.csv"]  # no journal begun, no lock file left
    folder = label(tmp_path / "corpus", "-o", tmp_path / "corpus")
    assert folder.returncode == EXIT_ERROR and "is a folder; -o takes the path of the CSV file to write" in folder.stderr
    assert label(tmp_path / "corpus", "-o", out, "--force").returncode == EXIT_OK
    assert len(read_rows(out)) == 2


def test_an_output_written_in_another_mode_is_relabelled_with_a_warning(tmp_path):
    make_corpus(tmp_path / "corpus", 3)
    out = tmp_path / "out.csv"
    label(tmp_path / "corpus", "-o", out, "--window", "1", check=True)
    assert "start_s" in read_rows(out)[0]
    result = label(tmp_path / "corpus", "-o", out)
    assert result.returncode == EXIT_OK
    assert "relabelling every file" in result.stderr and "labelled 3 new or changed files" in result.stderr
    assert "start_s" not in read_rows(out)[0]


def test_kept_rows_take_the_manifests_current_columns(tmp_path):
    corpus = tmp_path / "corpus"
    paths = make_corpus(corpus, 3)
    manifest = corpus / "list.csv"
    manifest.write_text("path,speaker\n" + "".join(f"{p.relative_to(corpus)},old{i}\n" for i, p in enumerate(paths)))
    out = tmp_path / "out.csv"
    label(manifest, "-o", out, check=True)
    manifest.write_text("path,speaker\n" + "".join(f"{p.relative_to(corpus)},new{i}\n" for i, p in enumerate(paths)))
    result = label(manifest, "-o", out)
    assert "labelled 0 new or changed files" in result.stderr
    assert [(r["path"], r["speaker"]) for r in read_rows(out)] == [(str(p.relative_to(tmp_path)), f"new{i}") for i, p in enumerate(paths)]


def test_one_row_per_path_and_one_file_per_path(tmp_path):
    corpus = tmp_path / "corpus"
    [a, b] = make_corpus(corpus, 2)
    out = tmp_path / "out.csv"
    result = label(corpus, a, "-o", out)  # a is given twice: inside the folder and by name
    assert result.returncode == EXIT_OK
    assert [r["path"] for r in read_rows(out)] == [str(a), str(b)]
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
        sf.write(tmp_path / name / "same.wav", tone(500, 0.5), 16000)
        (tmp_path / name / "list.csv").write_text("path\nsame.wav\n")
    # Two manifests' same.wav are two files: paths relative to the output's folder tell them apart.
    both = label(tmp_path / "x" / "list.csv", tmp_path / "y" / "list.csv", "-o", tmp_path / "both.csv")
    assert both.returncode == EXIT_OK, both.stderr
    assert [r["path"] for r in read_rows(tmp_path / "both.csv")] == ["x/same.wav", "y/same.wav"]
    # One file named two ways (by a folder given relative, and by a manifest given absolute): one row.
    (tmp_path / "x" / "list.csv").write_text("path\n../x/same.wav\n")
    once = label("x", tmp_path / "x" / "list.csv", "-o", "once.csv", cwd=tmp_path)
    assert once.returncode == EXIT_OK, once.stderr
    assert [r["path"] for r in read_rows(tmp_path / "once.csv")] == ["x/same.wav"]


def test_long_files_get_an_error_row_pointing_to_window_mode_which_labels_them(tmp_path):
    rate = 16000
    recording = np.zeros(rate * 45, dtype=np.float32)
    for second, word in [(5, "yes"), (31, "stop")]:
        clip, _ = sf.read(SAMPLES / f"{word}_0.wav", dtype="float32")
        recording[second * rate : second * rate + len(clip)] = clip
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a_recording.flac", recording, rate)
    sf.write(tmp_path / "in" / "b_quiet.wav", np.zeros(rate // 2, dtype=np.float32), rate)
    clip_mode = label(tmp_path / "in", "-o", tmp_path / "clips.csv")
    assert clip_mode.returncode == EXIT_PARTIAL
    [long_row, _] = read_rows(tmp_path / "clips.csv")
    assert "45.0 s is longer than the 30 s limit for a clip (label long recordings with --window)" in long_row["error"]

    out = tmp_path / "windows.csv"
    windowed = label(tmp_path / "in", "-o", out, "--window", "1", "--hop", "0.5")
    assert windowed.returncode == EXIT_OK, windowed.stderr
    rows = read_rows(out)
    assert list(rows[0])[:5] == ["path", "start_s", "end_s", "label", "confidence"]
    detections = [(r["label"], float(r["start_s"]), float(r["end_s"])) for r in rows if r["path"].endswith("a_recording.flac")]
    assert ("yes", 5.0, 6.0) in detections or any(w == "yes" and s <= 5.5 and e >= 5.5 for w, s, e in detections)
    assert any(w == "stop" and s <= 31.5 and e >= 31.5 for w, s, e in detections)
    assert all(r["duration_s"] == "45.000" for r in rows if r["path"].endswith("a_recording.flac"))
    [quiet] = [r for r in rows if r["path"].endswith("b_quiet.wav")]
    assert (quiet["label"], quiet["start_s"], quiet["error"], quiet["duration_s"]) == ("", "", "", "0.500")  # read, nothing found
    before = out.read_bytes()
    again = label(tmp_path / "in", "-o", out, "--window", "1", "--hop", "0.5")
    assert "labelled 0 new or changed files (0 failed), skipped 2 unchanged" in again.stderr
    assert out.read_bytes() == before


def test_quiet_prints_nothing_and_log_keeps_the_summary(tmp_path):
    make_corpus(tmp_path / "corpus", 2)
    log = tmp_path / "cron.log"
    result = label(tmp_path / "corpus", "-o", tmp_path / "out.csv", "--quiet", "--log", log)
    assert (result.returncode, result.stdout, result.stderr) == (EXIT_OK, "", "")
    bad = label(tmp_path / "nowhere", "-o", tmp_path / "out.csv", "-q", "--log", log)
    assert bad.returncode == EXIT_ERROR and bad.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such file or folder"
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0][:4].isdigit() and "labelled 2 new or changed files (0 failed), skipped 0 unchanged; 2 rows in" in lines[0]
    assert lines[1].endswith(f"error: {tmp_path / 'nowhere'}: no such file or folder")


def test_standard_output_streams_rows_in_input_order_and_refuses_incremental_flags(tmp_path):
    paths = make_corpus(tmp_path / "corpus", 5)
    result = label(tmp_path / "corpus", "-j", "2", "--batch-size", "2")
    assert result.returncode == EXIT_OK
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    usage = label(tmp_path / "corpus", "--force")
    assert usage.returncode == EXIT_USAGE and "argument --force: needs an output file (-o FILE)" in usage.stderr
    assert label(tmp_path / "corpus", "--window", "1", "--hop", "2", "-o", tmp_path / "o.csv").returncode == EXIT_USAGE


def test_every_exit_status_is_documented():
    reference = (REPO / "docs" / "commands.md").read_text()
    table = reference[reference.index("## Exit status") :]
    for status in (EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_LOCKED, EXIT_INTERRUPTED, EXIT_TERMINATED):
        assert f"| {status} |" in table


# --- killed and overlapping runs -------------------------------------------------------------


def start_label(*args, hold: str | None = None) -> subprocess.Popen:
    """Start `kwsbatch label ARGS`; hold ("point[#n]@folder", kwsbatch/faults.py) stops it at that moment."""
    env = {**os.environ, "COLUMNS": "200", **({"KWSBATCH_HOLD": hold} if hold else {})}
    return subprocess.Popen(
        [sys.executable, "-m", "kwsbatch", "label", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=interruptible,
    )


def journaled(out: Path) -> int:
    """Files committed to the journal of a run writing out (0 before it has one)."""
    journal = Path(f"{out}.journal")
    if not journal.exists():
        return 0
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM results WHERE imported = 0").fetchone()[0]
    except sqlite3.Error:
        return 0  # not created yet
    finally:
        db.close()


def wait_until(condition, process: subprocess.Popen, what: str) -> None:
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}: {process.stderr.read()}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Enough files that a one-at-a-time run lasts seconds: time to kill it or to collide with it."""
    root = tmp_path_factory.mktemp("big")
    return root / "corpus", make_corpus(root / "corpus", 1500, seconds=(0.2, 0.4))


SLOW_FLAGS = ("--batch-size", "1", "--jobs", "1")  # a task (one commit) is 4 files


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_labels_every_file_exactly_once(big_corpus, tmp_path):
    corpus, paths = big_corpus
    out = tmp_path / "out.csv"
    label(corpus, "-o", out, *SLOW_FLAGS, "--max-seconds", "10", check=True)  # a previous output to protect
    reference = {r["path"]: r for r in read_rows(out)}
    previous = out.read_bytes()
    committed = []
    for threshold in (1, 200, 600):
        run = start_label(corpus, "-o", out, *SLOW_FLAGS, "--force")
        wait_until(lambda: journaled(out) >= threshold, run, f"{threshold} files were journaled")
        run.send_signal(signal.SIGKILL)
        run.wait()
        assert out.read_bytes() == previous  # the old output is never half-written
        committed.append(journaled(out))
        assert committed[-1] >= threshold
    final = label(corpus, "-o", out, *SLOW_FLAGS, "--force")
    assert final.returncode == EXIT_OK, final.stderr
    # Only what was in flight at each kill was redone: the last run labelled exactly what the journal lacked.
    assert f"labelled {len(paths) - committed[-1]:,} new or changed files (0 failed)" in final.stderr
    assert f"resumed {committed[-1]:,} from an interrupted run" in final.stderr
    rows = read_rows(out)
    assert [r["path"] for r in rows] == [str(p) for p in paths]  # each file once, in order
    for row in rows:
        assert row["label"] == reference[row["path"]]["label"]
        assert float(row["confidence"]) == pytest.approx(float(reference[row["path"]]["confidence"]), abs=1e-5)
    assert not Path(f"{out}.journal").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_ctrl_c_keeps_the_journal_and_says_how_to_finish(big_corpus, tmp_path):
    corpus, paths = big_corpus
    out, holds = tmp_path / "out.csv", tmp_path / "holds"
    holds.mkdir()
    # Ctrl-C at the run's 20th request for work: mid-run on any machine, however loaded.
    run = start_label(corpus, "-o", out, *SLOW_FLAGS, hold=f"before-submit#20@{holds}")
    wait_until(lambda: any(holds.iterdir()), run, "it asked for work the 20th time")
    at_hold = journaled(out)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate()
    assert run.returncode == EXIT_INTERRUPTED
    assert f"interrupted; files labelled so far are kept in {out}.journal: run the same command again to finish" in stderr
    assert not out.exists()
    done = journaled(out)
    assert 16 <= at_hold <= done < len(paths)
    final = label(corpus, "-o", out, "-j", "2")
    assert final.returncode == EXIT_OK
    assert f"labelled {len(paths) - done:,} new or changed files" in final.stderr
    assert len(read_rows(out)) == len(paths)


@pytest.mark.slow
def test_a_second_run_on_the_same_output_exits_at_once_or_waits_with_wait(big_corpus, tmp_path):
    corpus, paths = big_corpus
    out = tmp_path / "out.csv"
    # The test holds the lock itself, as a run in progress does, so the overlap never depends on how
    # fast a first run would have finished.
    with output_lock(out):
        second = label(corpus, "-o", out, "--log", tmp_path / "cron.log")
        assert second.returncode == EXIT_LOCKED
        assert second.stderr.startswith(f"error: {out}: another kwsbatch run is writing it (pid {os.getpid()}, since ")
        assert second.stderr.rstrip().endswith("this run did nothing (use --wait to queue behind it)")
        assert "another kwsbatch run is writing it" in (tmp_path / "cron.log").read_text()
        waiting = start_label(corpus, "-o", out, "--wait")
        # It says so when it reaches the lock, and must then stay queued while the test holds it.
        said = waiting.stderr.readline()
        assert said == f"{out}: another kwsbatch run is writing it (pid {os.getpid()}, since {said.split('since ')[1]}"
        assert said.endswith("; waiting for it to finish\n")
        assert waiting.poll() is None and not out.exists()
    _, waiting_err = waiting.communicate()
    assert waiting.returncode == EXIT_OK, waiting_err
    assert f"labelled {len(paths):,} new or changed files (0 failed)" in waiting_err


@pytest.mark.slow
def test_a_killed_run_resumes_from_another_working_directory_with_paths_relative_to_the_output(tmp_path):
    """The journal is keyed by the output's own paths, so the rerun matches the killed run's rows
    whichever folder cron starts it in."""
    paths = make_corpus(tmp_path / "data" / "clips", 40)
    (tmp_path / "data" / "clips.csv").write_text("path\n" + "".join(f"{p.relative_to(tmp_path / 'data')}\n" for p in paths))
    holds = tmp_path / "holds"
    holds.mkdir()
    # Held when it asks for a third task: the first two tasks' files are in the journal.
    run = subprocess.Popen(
        [sys.executable, "-m", "kwsbatch", "label", "clips.csv", "-o", "../out/labels.csv", *SLOW_FLAGS],
        cwd=tmp_path / "data", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200", "KWSBATCH_HOLD": f"before-submit#3@{holds}"},
    )
    wait_until(lambda: any(holds.iterdir()), run, "it stopped at the hold point")
    run.send_signal(signal.SIGKILL)
    run.wait()
    out = tmp_path / "out" / "labels.csv"
    done = journaled(out)
    assert done >= 2
    final = label("data/clips.csv", "-o", "out/labels.csv", *SLOW_FLAGS, cwd=tmp_path)
    assert final.returncode == EXIT_OK, final.stderr
    assert f"labelled {len(paths) - done:,} new or changed files (0 failed)" in final.stderr
    assert f"resumed {done:,} from an interrupted run" in final.stderr
    assert [r["path"] for r in read_rows(out)] == [os.path.relpath(p, out.parent) for p in paths]
