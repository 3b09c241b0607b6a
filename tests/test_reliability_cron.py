"""Fault injection, what a cron job meets in real corpora: names that are any bytes, things that are
not regular files, headers that lie about rates and lengths, files still being written, paths
beside the output taken by something else, SIGTERM, and two first runs of bin/kwsbatch at once.
Every case goes through the real CLI: in this process (run_main) where a fresh one is not the point,
in a process of its own where it is (memory, signals, what reaches standard output as bytes)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, flac_claiming, run_cli, run_main, tone
from test_reliability_kill import held_pid, journaled, needs_proc_children, start_held, wait_until_gone, worker_pids

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL, EXIT_TERMINATED = 0, 1, 3, 143


def fs(name: bytes) -> str:
    """A file name's bytes as Python gives them back from the file system (surrogate escapes)."""
    return os.fsdecode(name)


def read_rows(path: Path) -> dict[str, dict]:
    """Rows by path; the CSV holds names' own bytes, read back as surrogate escapes."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """A 16-bit WAV of samples whose header says rate (any 32-bit value), written by hand."""
    data = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, (rate * 2) & 0xFFFFFFFF, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data


def with_data_size(wav: bytes, size: int) -> bytes:
    """The WAV with its data chunk claiming size bytes (as a writer that has not finished leaves it)."""
    return wav[:40] + struct.pack("<I", size) + wav[44:]


def block_device() -> str | None:
    for entry in sorted(os.scandir("/dev"), key=lambda e: e.name):
        with contextlib.suppress(OSError):
            if stat.S_ISBLK(entry.stat().st_mode):
                return entry.path
    return None


ONE_SECOND = tone(440, 1.0)
GOOD = wav_bytes(ONE_SECOND, 16000)

# name (bytes) -> its content: every one is labelled, and the output's path opens it again
ODD_NAMES = {
    b"caf\xe9.wav": GOOD,  # Latin-1, not UTF-8 (issue case 1)
    b"\xff\xfe\x80.wav": GOOD,  # no encoding's text at all
    b"a\x1fb.wav": GOOD,  # the journal's old separator (case 2)
    b"new\nline.wav": GOOD,
    b"carriage\rreturn.wav": GOOD,
    b"tab\tname.wav": GOOD,
    b"-leading-dash.wav": GOOD,
    b"back\\slash \\udce9.wav": GOOD,  # text that looks like an escape must stay that text
    b"x" * 251 + b".wav": GOOD,  # 255 bytes, the longest name ext4 allows
}

# name -> (how to make it, expected error after "<path>: ")
NOT_REGULAR = {
    "fifo.wav": (lambda p: os.mkfifo(p), "is a FIFO (named pipe), not an audio file"),  # case 3: never opened, no hang
    "zero.wav": (lambda p: os.symlink("/dev/zero", p), "is a character device, not an audio file"),
    "urandom.wav": (lambda p: os.symlink("/dev/urandom", p), "is a character device, not an audio file"),
    "null.wav": (lambda p: os.symlink("/dev/null", p), "is a character device, not an audio file"),
    "tty.wav": (lambda p: os.symlink("/dev/tty", p), "is a character device, not an audio file"),
}

# name -> (content, expected error, or None when labelled; the row's sample_rate when labelled)
RATES = {
    "rate-16001.wav": (wav_bytes(ONE_SECOND, 16001), None),  # case 4: was a 4.5 GB kernel
    "rate-44056.wav": (wav_bytes(tone(440, 1.0, rate=44056), 44056), None),
    "rate-1.wav": (wav_bytes(ONE_SECOND[:10], 1), None),  # 10 s at 1 Hz: an exact, small kernel
    "rate-0.wav": (wav_bytes(ONE_SECOND, 0), "cannot decode audio ("),
    "rate-768001.wav": (wav_bytes(ONE_SECOND, 768001), "its header claims a sample rate of 768,001 Hz; kwsbatch reads 1-768,000 Hz"),
    "rate-2147483647.wav": (wav_bytes(ONE_SECOND, 2**31 - 1), "its header claims a sample rate of 2,147,483,647 Hz; kwsbatch reads 1-768,000 Hz"),
}

PROMISES_MORE = "its header promises (cut short, or still being written): labelled from what is there"


def peak_rss_mib(result: subprocess.CompletedProcess) -> float:
    """The peak RSS a label run reports in its summary line."""
    return float(result.stderr.split("peak RSS ")[1].split(" MiB")[0].replace(",", ""))


@pytest.fixture(scope="module")
def baseline_peak(tmp_path_factory) -> float:
    """The peak RSS of a label run over one plain clip: the memory every run takes (torch, the model)."""
    root = tmp_path_factory.mktemp("baseline")
    (root / "a.wav").write_bytes(GOOD)
    result = run_cli("label", root / "a.wav", "-o", root / "out.csv", "-j", "1")
    assert result.returncode == EXIT_OK, result.stderr
    return peak_rss_mib(result)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, dict[str, dict]]:
    """One `label -o` run over a folder holding every case; peak memory is reported by the run."""
    root = tmp_path_factory.mktemp("hostile")
    folder = root / "in"
    folder.mkdir()
    for name, content in ODD_NAMES.items():
        (folder / fs(name)).write_bytes(content)
    for name, (make, _) in NOT_REGULAR.items():
        make(folder / name)
    if device := block_device():
        os.symlink(device, folder / "block.wav")
    with contextlib.chdir(folder):  # a socket's path must fit in 108 bytes: bind it by its short relative name
        server = socket.socket(socket.AF_UNIX)
        server.bind("socket.wav")
    for name, (content, _) in RATES.items():
        (folder / name).write_bytes(content)
    (folder / "growing.wav").write_bytes(GOOD[: 44 + 2000])  # header promises 1 s, 1,000 frames written so far
    (folder / "placeholder.wav").write_bytes(with_data_size(GOOD, 0xFFFFFFFF))  # a streaming writer's "length not known yet"
    flac_claiming(folder / "billions.flac", 2**36 - 1)
    (folder / "folder.wav").mkdir()  # a folder named like audio: scanned, not decoded
    (folder / "folder.wav" / "inside.wav").write_bytes(GOOD)
    out = root / "out.csv"
    result = run_cli("label", folder, "-o", out, "-j", "1")
    server.close()
    return folder, result, read_rows(out)


def test_the_hostile_folder_is_labelled_with_one_row_per_file_and_no_traceback(hostile):
    folder, result, rows = hostile
    assert result.returncode == EXIT_PARTIAL, result.stderr
    assert "Traceback" not in result.stderr
    expected = {str(folder / fs(n)) for n in ODD_NAMES} | {str(folder / n) for n in [*NOT_REGULAR, *RATES, "socket.wav"]}
    expected |= {str(folder / n) for n in ("growing.wav", "placeholder.wav", "billions.flac", "folder.wav/inside.wav")}
    if block_device():
        expected.add(str(folder / "block.wav"))
    assert set(rows) == expected


@pytest.mark.parametrize("name", list(ODD_NAMES), ids=[repr(n)[2:-1][:30] for n in ODD_NAMES])
def test_any_name_is_labelled_and_its_path_opens_the_same_file(hostile, name):
    folder, _, rows = hostile
    row = rows[str(folder / fs(name))]
    assert row["error"] == "" and row["label"] and row["warning"] == ""
    with open(row["path"], "rb") as f:  # the path as read back from the CSV
        assert f.read() == ODD_NAMES[name]


@pytest.mark.parametrize("name", [*NOT_REGULAR, "socket.wav", "block.wav"])
def test_what_is_not_a_regular_file_gets_an_error_row_and_is_never_read(hostile, name):
    folder, _, rows = hostile
    if name == "block.wav" and not block_device():
        pytest.skip("no block device in /dev to link to")
    kinds = {"socket.wav": "is a socket, not an audio file", "block.wav": "is a block device, not an audio file"}
    expected = NOT_REGULAR[name][1] if name in NOT_REGULAR else kinds[name]
    assert rows[str(folder / name)]["error"] == f"{folder / name}: {expected}"


@pytest.mark.parametrize("name", list(RATES))
def test_any_sample_rate_a_header_claims_is_resampled_in_bounded_memory_or_refused(hostile, name):
    folder, result, rows = hostile
    row = rows[str(folder / name)]
    error = RATES[name][1]
    if error is None:
        assert row["error"] == "" and row["label"]
        assert row["sample_rate"] == name.split("-")[1].split(".")[0]  # the file's own rate, even when resampled from a nearby one
    else:
        assert row["error"].startswith(f"{folder / name}: {error}")


def test_the_whole_hostile_run_takes_the_memory_of_a_plain_one(hostile, baseline_peak):
    # A 16,001 Hz kernel alone took 4,500 MiB, about 8 times a plain run.
    _, result, _ = hostile
    assert peak_rss_mib(result) < 1.5 * baseline_peak


def test_a_header_promising_more_than_the_file_holds_is_labelled_with_a_warning(hostile):
    folder, _, rows = hostile
    growing, placeholder = rows[str(folder / "growing.wav")], rows[str(folder / "placeholder.wav")]
    assert growing["label"] and growing["error"] == "" and growing["duration_s"] == "0.062"
    assert growing["warning"] == f"the file holds 0.062 s of the 1.000 s {PROMISES_MORE}"
    assert placeholder["label"] and placeholder["error"] == "" and placeholder["duration_s"] == "1.000"
    assert placeholder["warning"].startswith("the file holds 1.000 s of the 134217.728 s its header promises")
    # A FLAC claiming 2^36 frames is refused by its header's length, without reading (or allocating) them.
    billions = rows[str(folder / "billions.flac")]
    assert billions["error"] == f"{folder / 'billions.flac'}: {(2**36 - 1) / 16000:.1f} s is longer than the 30 s limit for a clip (label long recordings with --window)"


def test_a_header_claiming_billions_of_frames_costs_no_memory_for_them(tmp_path, baseline_peak):
    # Read block by block, never allocated at the header's size (2^36 frames: 256 GiB): window mode,
    # which has no length limit, reads the second that is there, then libsndfile fails to seek to
    # the rest that is not, which is the file's error row.
    flac_claiming(tmp_path / "billions.flac", 2**36 - 1)
    out = tmp_path / "out.csv"
    result = run_cli("label", tmp_path / "billions.flac", "-o", out, "--window", "1")
    assert result.returncode == EXIT_PARTIAL and "Traceback" not in result.stderr
    (row,) = read_rows(out).values()
    assert row["error"].startswith(f"{tmp_path / 'billions.flac'}: cannot decode audio (")
    assert peak_rss_mib(result) < 1.5 * baseline_peak


def test_a_rerun_over_the_hostile_folder_labels_only_the_failed_files_again(hostile, tmp_path):
    # Every name is a key that round-trips (case 2 relabelled the \x1f name on every run); only the
    # error rows are tried again, and the FIFO still does not hang the run.
    folder, first, rows = hostile
    out = tmp_path / "out.csv"
    shutil.copy(Path(folder).parent / "out.csv", out)
    again = run_main("label", folder, "-o", out, "-j", "1")
    assert again.returncode == EXIT_PARTIAL, again.stderr
    failed = sum(bool(r["error"]) for r in rows.values())
    assert f"labelled {failed} new or changed files ({failed} failed), skipped {len(rows) - failed} unchanged" in again.stderr
    assert read_rows(out).keys() == rows.keys()


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_json_lines_and_parquet_keep_names_that_are_not_utf8(tmp_path, kind):
    if kind == "parquet":
        pytest.importorskip("pyarrow")
    folder = tmp_path / "in"
    folder.mkdir()
    names = [b"caf\xe9.wav", b"plain.wav", b"a\x1fb.wav"]
    for name in names:
        (folder / fs(name)).write_bytes(GOOD)
    out = tmp_path / f"out.{kind}"
    first = run_main("label", folder, "-o", out, "-j", "1")
    assert first.returncode == EXIT_OK, first.stderr
    if kind == "jsonl":
        text = out.read_bytes().decode("utf-8")  # valid UTF-8: the odd byte is the JSON escape \udce9
        assert '"path": "' + str(folder).replace("\\", "\\\\") + '/caf\\udce9.wav"' in text
        paths = [json.loads(line)["path"] for line in text.splitlines()]
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out).to_pylist()
        # Scan order: a\x1fb, caf\xe9, plain. `path` is readable text; path_bytes holds the exact name.
        assert table[1]["path"] == str(folder) + "/caf\ufffd.wav"
        assert [r["path_bytes"] for r in table] == [None, os.fsencode(folder / fs(names[0])), None]
        paths = [os.fsdecode(r["path_bytes"]) if r["path_bytes"] else r["path"] for r in table]
    assert sorted(paths) == sorted(str(folder / fs(n)) for n in names)
    assert all(Path(p).read_bytes() == GOOD for p in paths)
    again = run_main("label", folder, "-o", out, "-j", "1")  # the previous output read back: nothing to relabel
    assert "labelled 0 new or changed files (0 failed), skipped 3 unchanged" in again.stderr


def test_label_to_standard_output_writes_a_names_own_bytes(tmp_path):
    (tmp_path / fs(b"caf\xe9.wav")).write_bytes(GOOD)
    result = subprocess.run([sys.executable, "-m", "kwsbatch", "label", str(tmp_path), "-q"], capture_output=True, check=False)
    assert result.returncode == EXIT_OK, result.stderr
    assert os.fsencode(tmp_path) + b"/caf\xe9.wav," in result.stdout


def test_merge_keeps_segments_of_a_file_that_are_not_next_to_each_other(tmp_path):
    # Case 5: rows of one file's segments, with another file between them, were taken for duplicates.
    sf.write(tmp_path / "long.wav", tone(440, 3.0), 16000)
    sf.write(tmp_path / "short.wav", tone(880, 0.5), 16000)
    (tmp_path / "m.csv").write_text("path,offset,duration\nlong.wav,0,1\nshort.wav,,\nlong.wav,1,1\nlong.wav,2,1\n")
    shard = tmp_path / "shard.csv"
    assert run_main("label", tmp_path / "m.csv", "-o", shard, "-q").returncode == EXIT_OK
    result = run_main("merge", shard, "-o", tmp_path / "merged.csv", "--inputs", tmp_path / "m.csv")
    assert result.returncode == EXIT_OK, result.stderr
    assert "merged 1 shards: 4 files, 4 rows" in result.stderr and "duplicated" not in result.stderr
    with open(tmp_path / "merged.csv", newline="") as f:
        assert [(r["path"], r["offset"]) for r in csv.DictReader(f)] == [("long.wav", "0"), ("short.wav", ""), ("long.wav", "1"), ("long.wav", "2")]


# --- paths beside the output ------------------------------------------------------------------


def _make_taken(path: Path, kind: str) -> None:
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling link":
        os.symlink("nowhere/at/all", path)
    elif kind == "device link":
        os.symlink("/dev/null", path)


@pytest.mark.parametrize(
    "suffix, kind",
    [(".journal", "folder"), (".journal", "fifo"), (".lock", "folder"), (".lock", "fifo"), (".lock", "dangling link"),
     (".journal-wal", "dangling link"), (".journal-shm", "device link")],
)
def test_a_path_the_run_keeps_beside_the_output_taken_by_something_else_is_one_error_line(tmp_path, suffix, kind):
    # Case 6: a folder where the journal goes was an IsADirectoryError traceback; a FIFO lock file hung.
    (tmp_path / "a.wav").write_bytes(GOOD)
    out = tmp_path / "out.csv"
    taken = tmp_path / f"out.csv{suffix}"
    _make_taken(taken, kind)
    result = run_main("label", tmp_path / "a.wav", "-o", out, "-q")
    assert result.returncode == EXIT_ERROR
    found = "a symbolic link" if "link" in kind else {"folder": "a folder", "fifo": "a FIFO (named pipe)"}[kind]
    what = "lock file" if suffix == ".lock" else "journal"
    assert result.stderr == f"error: {taken}: is {found}, where this run keeps its {what}; move it away and run again\n"
    assert not out.exists()


def test_output_through_a_symbolic_link_writes_the_target_and_keeps_the_link(tmp_path):
    # Case 7: the rename replaced the link with a file, leaving the target stale, and locked the link's name.
    (tmp_path / "a.wav").write_bytes(GOOD)
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "labels.csv"
    os.symlink(real / "target.csv", link)  # dangling until the first run writes the target
    for run in range(2):
        result = run_main("label", tmp_path / "a.wav", "-o", link)
        assert result.returncode == EXIT_OK, result.stderr
        assert link.is_symlink() and os.readlink(link) == str(real / "target.csv")
        assert list(read_rows(real / "target.csv")) == [str(tmp_path / "a.wav")]
        assert f"-> {real / 'target.csv'}" in result.stderr
    assert "labelled 0 new or changed files" in result.stderr  # the second run found the target's rows
    assert sorted(p.name for p in real.iterdir()) == ["target.csv"]  # its lock file was removed by its holder
    assert not (tmp_path / "labels.csv.lock").exists()


def test_output_through_a_symbolic_link_names_files_relative_to_the_target_and_reads_back_through_either(tmp_path):
    # The rows are in the target's folder, so its relative paths are relative to that folder, and a
    # manifest read through a link resolves against the same folder: the link and the file read alike.
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "a.wav").write_bytes(GOOD)
    target = tmp_path / "runs" / "today" / "labels.csv"
    target.parent.mkdir(parents=True)
    (tmp_path / "links").mkdir()
    os.symlink("../runs/today/labels.csv", tmp_path / "links" / "latest.csv")
    run_main("label", "audio/a.wav", "-o", "links/latest.csv", "-q", cwd=tmp_path, check=True)
    assert list(read_rows(target)) == ["../../audio/a.wav"]
    again = run_main("label", "audio/a.wav", "-o", "links/latest.csv", cwd=tmp_path)
    assert "labelled 0 new or changed files" in again.stderr, again.stderr  # keyed by the same relative path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for n, table in enumerate((tmp_path / "links" / "latest.csv", target)):
        run_main("label", table, "-o", f"relabelled{n}.csv", "-q", cwd=elsewhere, check=True)
        assert list(read_rows(elsewhere / f"relabelled{n}.csv")) == ["../audio/a.wav"]
        run_main("merge", table, "-o", f"merged{n}.csv", "--inputs", "../audio", cwd=elsewhere, check=True)
        assert list(read_rows(elsewhere / f"merged{n}.csv")) == ["../audio/a.wav"]


def test_output_to_dev_null_streams_and_makes_no_lock_in_dev(tmp_path):
    (tmp_path / "a.wav").write_bytes(GOOD)
    result = run_main("label", tmp_path / "a.wav", "-o", "/dev/null", "-q")
    assert result.returncode == EXIT_OK, result.stderr
    assert not Path("/dev/null.lock").exists() and not Path("/dev/null.journal").exists()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_output_to_dev_stdout_appends_to_the_file_cron_sends_standard_output_to(tmp_path):
    (tmp_path / "a.wav").write_bytes(GOOD)
    log = tmp_path / "cron.log"
    log.write_text("an earlier line\n")
    with open(log, "a") as stdout:  # as `>> cron.log` in a crontab
        result = subprocess.run([sys.executable, "-m", "kwsbatch", "label", str(tmp_path / "a.wav"), "-o", "/dev/stdout", "-q"],
                                stdout=stdout, stderr=subprocess.PIPE, text=True, check=False)
    assert result.returncode == EXIT_OK, result.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "an earlier line" and lines[1].startswith("path,label,") and lines[2].startswith(f"{tmp_path / 'a.wav'},")
    assert not Path("/dev/stdout.lock").exists()


def test_output_to_a_fifo_streams_to_its_reader(tmp_path):
    (tmp_path / "a.wav").write_bytes(GOOD)
    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    result = run_main("label", tmp_path / "a.wav", "-o", fifo, "-q")
    reader.join(timeout=60)
    assert result.returncode == EXIT_OK, result.stderr
    assert got[0].splitlines()[1].startswith(f"{tmp_path / 'a.wav'},")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "rows.fifo"]


def test_output_at_a_socket_is_one_error_line(tmp_path):
    (tmp_path / "a.wav").write_bytes(GOOD)
    with contextlib.chdir(tmp_path), socket.socket(socket.AF_UNIX) as server:
        server.bind("out.csv")
        result = run_main("label", tmp_path / "a.wav", "-o", tmp_path / "out.csv", "-q")
    assert result.returncode == EXIT_ERROR
    assert result.stderr == f"error: {tmp_path / 'out.csv'}: is a socket; -o takes a regular file, or a FIFO or character device to stream to\n"
    assert not (tmp_path / "out.csv.lock").exists()


# --- SIGTERM and files still being written ----------------------------------------------------------


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """300 clips of 0.2 s: ten tasks of 32 at --batch-size 8, more than two workers hold at once."""
    root = tmp_path_factory.mktemp("small") / "corpus"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(300):
        sf.write(root / f"clip{i:03d}.wav", tone(rng.uniform(150, 3000), 0.2), 16000)
    return root


@needs_proc_children
@pytest.mark.parametrize("workers", [["-j", "1"], ["-j", "2"]], ids=["one worker", "two workers"])
def test_sigterm_stops_like_ctrl_c_keeps_the_journal_logs_and_exits_143(small_corpus, tmp_path, workers):
    out, holds, log = tmp_path / "out.csv", tmp_path / "holds", tmp_path / "run.log"
    # The second time the loader asks for a task: the first task's results are committed, more are in flight.
    run = start_held("before-submit#2", holds, "label", small_corpus, "-o", out, "--batch-size", "8", *workers, "--log", log, "-q")
    held_pid("before-submit", holds, run)
    # As systemd does, to every process of the run; the loader's workers first, the worst order for the run.
    workers = worker_pids(run.pid)
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    wait_until_gone(workers)
    os.kill(run.pid, signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == EXIT_TERMINATED, stderr
    line = f"terminated (SIGTERM); files labelled so far are kept in {out}.journal: run the same command again to finish"
    assert stderr.strip().splitlines()[-1] == line and "Traceback" not in stderr
    assert log.read_text().strip().endswith(line)
    kept = journaled(out)
    assert kept >= 32 and not out.exists()
    final = run_main("label", small_corpus, "-o", out, "--batch-size", "8", "-j", "1")
    assert final.returncode == EXIT_OK, final.stderr
    assert f"labelled {300 - kept:,} new or changed files" in final.stderr
    assert len(read_rows(out)) == 300


def test_files_modified_within_settle_seconds_are_left_to_the_next_run(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    now = time.time()
    for name, mtime in (("old.wav", now - 3600), ("skewed.wav", now + 7200)):  # far in the future: a skewed clock, not a writer
        (folder / name).write_bytes(GOOD)
        os.utime(folder / name, (mtime, mtime))
    out, holds = tmp_path / "out.csv", tmp_path / "holds"
    # The default (10 s, no flag, no $KWSBATCH_SETTLE): a file written once the run has started is left alone.
    env = {k: v for k, v in os.environ.items() if k != "KWSBATCH_SETTLE"}
    holds.mkdir()
    first = subprocess.Popen([sys.executable, "-m", "kwsbatch", "label", str(folder), "-o", str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**env, "KWSBATCH_HOLD": f"scan@{holds}"})
    held_pid("scan", holds, first)
    (folder / "fresh.wav").write_bytes(GOOD)  # still being written, as far as the run can tell
    (holds / "scan.go").touch()
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == EXIT_OK, stderr
    assert "labelled 2 new or changed files (0 failed), skipped 0 unchanged, deferred 1 modified in the last 10 s to the next run" in stderr
    assert set(read_rows(out)) == {str(folder / "old.wav"), str(folder / "skewed.wav")}
    settled = run_main("label", folder, "-o", out, "--settle", "0")
    assert "labelled 1 new or changed files (0 failed), skipped 2 unchanged" in settled.stderr
    labelled = read_rows(out)[str(folder / "fresh.wav")]
    # Rewritten (a minute ahead: within --settle 3600 of any moment this test runs): deferred, and its
    # earlier row kept, whose file_size says which version of the file it describes.
    (folder / "fresh.wav").write_bytes(wav_bytes(tone(440, 0.5), 16000))
    os.utime(folder / "fresh.wav", (time.time() + 60, time.time() + 60))
    again = run_main("label", folder, "-o", out, "--settle", "3600")
    assert "labelled 0 new or changed files (0 failed), skipped 2 unchanged, deferred 1 modified in the last 3600 s" in again.stderr
    assert read_rows(out)[str(folder / "fresh.wav")] == labelled
    last = run_main("label", folder, "-o", out, "--settle", "0")
    assert "labelled 1 new or changed files (0 failed), skipped 2 unchanged" in last.stderr
    assert read_rows(out)[str(folder / "fresh.wav")]["duration_s"] == "0.500"


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_settle_time_from_the_environment_that_is_not_seconds_is_a_usage_error(tmp_path, value):
    (tmp_path / "a.wav").write_bytes(GOOD)
    result = run_main("label", tmp_path / "a.wav", "-o", tmp_path / "out.csv", env_extra={"KWSBATCH_SETTLE": value})
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"argument --settle: $KWSBATCH_SETTLE must be 0 or more seconds, got {value!r}")
    assert not (tmp_path / "out.csv").exists()
    flag = run_main("label", tmp_path / "a.wav", "-o", tmp_path / "out.csv", "--settle", value)
    assert flag.returncode == 2 and "argument --settle: " in flag.stderr and not (tmp_path / "out.csv").exists()


# --- bin/bootstrap ------------------------------------------------------------------------------

STUB_PYTHON = r"""#!/usr/bin/env bash
# Stands in for python3 and the venv's python: records what bin/bootstrap asks of it.
if [[ "$1 $2" == "-m venv" ]]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && echo "venv" >> "$STUB_LOG"
elif [[ "$1 $2 $3" == "-m pip --version" ]]; then
    [[ ! -e "$(dirname "$0")/no-pip" ]]
elif [[ "$1 $2 $3" == "-m pip install" ]]; then
    echo "pip start $PPID" >> "$STUB_LOG"
    touch "$STUB_HOLD/pip.$PPID"
    while [[ ! -e "$STUB_HOLD/go" ]]; do sleep 0.01; done
    echo "pip end $PPID" >> "$STUB_LOG"
elif [[ "$1 $2" == "-m kwsbatch" ]]; then
    echo "kwsbatch $3"
fi
"""


@pytest.fixture
def repo_copy(tmp_path) -> tuple[Path, dict]:
    """bin/ and the files bin/bootstrap hashes, in a fresh folder, with a stub python."""
    if shutil.which("flock") is None:
        pytest.skip("flock(1) is not installed")
    free = shutil.disk_usage(tmp_path).free
    if free < 7 * 2**30:
        pytest.skip(f"bin/bootstrap refuses to start a .venv with less than 7 GB free; {tmp_path} has {free / 2**30:.1f} GB")
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "bin", repo / "bin")
    for name in ("setup.cfg", "pyproject.toml", "constraints.txt"):
        shutil.copy(REPO / name, repo / name)
    stub = tmp_path / "python3"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    (tmp_path / "holds").mkdir()
    env = {**os.environ, "KWSBATCH_PYTHON": str(stub), "STUB_LOG": str(tmp_path / "log"), "STUB_HOLD": str(tmp_path / "holds")}
    return repo, env


def test_two_first_runs_of_bin_kwsbatch_at_once_take_turns_setting_up_the_venv(repo_copy, tmp_path):
    # Case 8: the second run found a .venv without pip while the first was making it.
    repo, env = repo_copy
    first = subprocess.Popen([repo / "bin" / "kwsbatch", "--version"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not list((tmp_path / "holds").glob("pip.*")):  # the first is inside pip install
        assert first.poll() is None, first.communicate()
        time.sleep(0.01)
    held = subprocess.run(["flock", "-n", repo / ".venv.lock", "true"], check=False)
    assert held.returncode == 1  # the setup holds the lock beside .venv
    second = subprocess.Popen([repo / "bin" / "kwsbatch", "--version"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert second.stderr.readline() == f"kwsbatch: waiting for another run setting up {repo / '.venv'}...\n"
    (tmp_path / "holds" / "go").touch()
    assert [p.communicate(timeout=60)[0] for p in (first, second)] == ["kwsbatch --version\n"] * 2
    assert first.returncode == second.returncode == 0
    log = (tmp_path / "log").read_text().splitlines()
    assert [line.rsplit(" ", 1)[0] for line in log] == ["venv", "pip start", "pip end"]  # set up once, by the first


def test_a_venv_left_without_pip_by_a_killed_setup_is_made_again(repo_copy, tmp_path):
    repo, env = repo_copy
    (repo / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(env["KWSBATCH_PYTHON"], repo / ".venv" / "bin" / "python")
    (repo / ".venv" / "bin" / "no-pip").touch()
    (tmp_path / "holds" / "go").touch()
    result = subprocess.run([repo / "bin" / "kwsbatch", "--version"], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "has no pip (a setup was cut short); making it again" in result.stderr
    assert [line.rsplit(" ", 1)[0] for line in (tmp_path / "log").read_text().splitlines()] == ["venv", "pip start", "pip end"]


def test_check_over_a_folder_with_a_fifo_and_device_links_lists_them_and_does_not_hang(tmp_path):
    folder = tmp_path / "yes"
    folder.mkdir()
    (folder / "good.wav").write_bytes(GOOD)
    os.mkfifo(folder / "fifo.wav")
    os.symlink("/dev/zero", folder / "zero.wav")
    (folder / fs(b"caf\xe9.wav")).write_bytes(GOOD)
    out = tmp_path / "report.json"
    # Bytes, not text: the tables name caf\xe9.wav (a duplicate of good.wav) by its own bytes.
    result = subprocess.run([sys.executable, "-m", "kwsbatch", "check", str(folder), "-o", str(out), "-q"], capture_output=True, check=False)
    assert result.returncode == EXIT_OK, result.stderr
    assert os.fsencode(folder / fs(b"caf\xe9.wav")) in result.stdout
    unreadable = {Path(item["path"]).name: item["error"] for item in json.loads(out.read_text())["problems"]["unreadable"]["listed"]}
    assert unreadable == {"fifo.wav": "is a FIFO (named pipe), not an audio file", "zero.wav": "is a character device, not an audio file"}
