"""Fault injection, killed processes and unwritable outputs: label under SIGKILL at seeded random
moments and SIGINT, train under SIGKILL then --resume, and outputs that cannot be written."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import interruptible, run_cli, tone

from kwsbatch.model.checkpoint import load_checkpoint

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130
N_FILES = 2000
FLAGS = ("--batch-size", "16", "-j", "1", "-q")


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kwsbatch", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200"}, preexec_fn=interruptible,
    )


def journaled(out: Path) -> int:
    """Files this run committed to the journal of out (0 before it has one)."""
    journal = Path(f"{out}.journal")
    if not journal.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
        try:
            return db.execute("SELECT count(*) FROM results WHERE imported = 0").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0  # being created


def wait_for(condition, process: subprocess.Popen) -> bool:
    """Poll until condition holds (True) or the process has ended (False)."""
    while not condition():
        if process.poll() is not None:
            return False
        time.sleep(0.01)
    return True


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    """2,000 clips of 0.2 s, 50 to a folder."""
    root = tmp_path_factory.mktemp("tiny") / "corpus"
    rng = np.random.default_rng(0)
    for i in range(N_FILES):
        path = root / f"part{i // 50:02d}" / f"clip{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, tone(rng.uniform(150, 3000), 0.2), 16000)
    return root


@pytest.mark.slow
def test_sigkill_at_ten_random_moments_then_rerun_gives_the_uninterrupted_output(tiny_corpus, tmp_path):
    reference = tmp_path / "reference.csv"
    assert run_cli("label", tiny_corpus, "-o", reference, *FLAGS).returncode == EXIT_OK
    out = tmp_path / "out.csv"
    rng = np.random.default_rng(20261125)
    # Ten moments: one during start-up (a random delay, before any journal), eight after a random
    # number of files were committed, one once all are committed (while the output is written).
    moments = [("delay", rng.uniform(0.0, 1.5))] + [("files", int(n)) for n in np.sort(rng.choice(np.arange(16, N_FILES - 16), 8, replace=False))]
    moments.append(("files", N_FILES))
    killed = 0
    for kind, value in moments:
        run = start("label", tiny_corpus, "-o", out, *FLAGS)
        if kind == "delay":
            time.sleep(value)
            alive = run.poll() is None
        else:
            alive = wait_for(lambda value=value: journaled(out) >= value, run)
        if alive:
            run.send_signal(signal.SIGKILL)
            killed += 1
        run.communicate()
        # A killed run never leaves a partial output: out.csv is absent until a run completes.
        assert not out.exists() or run.returncode == EXIT_OK
    assert killed >= 9  # the last moment may find the run already finished
    final = run_cli("label", tiny_corpus, "-o", out, *FLAGS)
    assert final.returncode == EXIT_OK, final.stderr
    header, rows = read_table(out)
    ref_header, ref_rows = read_table(reference)
    assert header == ref_header
    assert all(len(r) == len(header) for r in rows)  # no torn lines
    paths = [r[0] for r in rows]
    assert len(paths) == len(set(paths)) == N_FILES  # no duplicates
    assert paths == [r[0] for r in ref_rows]
    probabilities = [i for i, name in enumerate(header) if name.startswith("p_") or name == "confidence"]
    for row, ref in zip(rows, ref_rows):
        assert [v for i, v in enumerate(row) if i not in probabilities] == [v for i, v in enumerate(ref) if i not in probabilities]
        # Batches differ between the runs; batch invariance holds to 1e-5, the CSV rounds to 1e-6.
        assert np.allclose([float(row[i]) for i in probabilities], [float(ref[i]) for i in probabilities], atol=2e-5)
    assert not Path(f"{out}.journal").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


needs_proc_children = pytest.mark.skipif(
    not any(Path("/proc/self/task").glob("*/children")),
    reason="needs Linux's /proc/PID/task/TID/children to find a run's worker processes",
)


def children(pid: int) -> set[int]:
    """The processes pid started (Linux /proc), found through each of its threads."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found.update(int(c) for c in (task / "children").read_text().split())
    return found


def start_held(point: str, folder: Path, *args) -> subprocess.Popen:
    """Start `kwsbatch ARGS` that stops at hold point `point` (kwsbatch/faults.py) until released."""
    folder.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "kwsbatch", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200", "KWSBATCH_HOLD": f"{point}@{folder}"}, preexec_fn=interruptible,
    )


def held_pid(point: str, folder: Path, process: subprocess.Popen) -> int:
    """The pid of the first process that stopped at point (the run itself, or one of its workers)."""
    def markers() -> list[Path]:
        return sorted(p for p in folder.glob(f"{point}.*") if p.suffix != ".go")

    assert wait_for(lambda: bool(markers()), process), process.communicate()[1]
    return int(markers()[0].name.rsplit(".", 1)[1])


def worker_pids(pid: int) -> list[int]:
    """The worker processes of a run (its children but multiprocessing's resource tracker)."""
    return sorted(w for w in children(pid) if "resource_tracker" not in Path(f"/proc/{w}/cmdline").read_text())


def wait_until_gone(pids) -> None:
    """Until every pid is reaped: for a killed worker, until the run's pool has seen it die."""
    while any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.01)


WORKER_FLAGS = ("--batch-size", "16", "-j", "2", "-q")


@pytest.mark.slow
@needs_proc_children
@pytest.mark.parametrize("phase", ["task", "before-submit"])
def test_a_worker_killed_while_a_task_runs_or_before_a_submit_is_one_error_line_and_a_rerun_resumes(tiny_corpus, tmp_path, phase):
    """A worker SIGKILLed (as the out-of-memory killer would), at an exact moment: while it scores a task
    (the result raises), or while the run is about to hand out the next task (the submit raises)."""
    out, holds = tmp_path / "out.csv", tmp_path / "holds"
    run = start_held(phase, holds, "label", tiny_corpus, "-o", out, *WORKER_FLAGS)
    pid = held_pid(phase, holds, run)
    workers = worker_pids(run.pid)
    victim = pid if phase == "task" else workers[0]
    assert victim in workers
    os.kill(victim, signal.SIGKILL)
    wait_until_gone(workers)  # the pool noticed, and stopped the other worker
    (holds / f"{phase}.go").touch()
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == EXIT_ERROR, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: a worker process died while labelling the files from ")
    assert "Traceback" not in stderr and not out.exists()
    kept = journaled(out)
    assert kept == 0 if phase == "task" else kept > 0  # before a submit, the tasks taken so far are journaled
    final = run_cli("label", tiny_corpus, "-o", out, *WORKER_FLAGS[:-1])  # not quiet: the summary line says what was redone
    assert final.returncode == EXIT_OK, final.stderr
    assert f"labelled {N_FILES - kept:,} new or changed files" in final.stderr
    paths = [r[0] for r in read_table(out)[1]]
    assert len(paths) == len(set(paths)) == N_FILES


@pytest.mark.slow
@needs_proc_children
def test_a_worker_that_dies_after_the_last_task_loses_nothing(tiny_corpus, tmp_path):
    """Killed while the run shuts its workers down, with every result taken: the output is whole."""
    out, holds = tmp_path / "out.csv", tmp_path / "holds"
    run = start_held("shutdown", holds, "label", tiny_corpus, "-o", out, *WORKER_FLAGS)
    held_pid("shutdown", holds, run)
    workers = worker_pids(run.pid)
    os.kill(workers[0], signal.SIGKILL)
    wait_until_gone(workers)
    (holds / "shutdown.go").touch()
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == EXIT_OK, stderr
    paths = [r[0] for r in read_table(out)[1]]
    assert len(paths) == len(set(paths)) == N_FILES


@pytest.mark.slow
@needs_proc_children
def test_a_killed_run_takes_its_worker_processes_with_it(tiny_corpus, tmp_path):
    out, holds = tmp_path / "out.csv", tmp_path / "holds"
    run = start_held("before-submit", holds, "label", tiny_corpus, "-o", out, *WORKER_FLAGS)
    held_pid("before-submit", holds, run)
    workers = worker_pids(run.pid)
    assert len(workers) == 2
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)  # workers left alive would hold its output pipes open
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()], "workers outlived the run"
    final = run_cli("label", tiny_corpus, "-o", out, *WORKER_FLAGS)
    assert final.returncode == EXIT_OK, final.stderr
    paths = [r[0] for r in read_table(out)[1]]
    assert len(paths) == len(set(paths)) == N_FILES
    assert paths == sorted(paths)  # input order: the corpus's sorted folders


@pytest.mark.slow
@pytest.mark.parametrize("workers", [["-j", "1"], ["-j", "2"]], ids=["one worker", "two workers"])
def test_sigint_stops_cleanly_keeps_progress_and_says_how_to_resume(tiny_corpus, tmp_path, workers):
    out, holds = tmp_path / "out.csv", tmp_path / "holds"
    # Ctrl-C while the run, seven batches in, asks its loader for more work: not before it has started,
    # however fast the machine, and never after it has finished, however slow.
    run = start_held("before-submit#7", holds, "label", tiny_corpus, "-o", out, "--batch-size", "16", *workers, "-q")
    assert held_pid("before-submit", holds, run) == run.pid
    at_hold = journaled(out)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == EXIT_INTERRUPTED
    assert stderr.strip().splitlines()[-1] == f"interrupted; files labelled so far are kept in {out}.journal: run the same command again to finish"
    assert "Traceback" not in stderr
    kept = journaled(out)
    assert 16 <= at_hold <= kept < N_FILES
    final = run_cli("label", tiny_corpus, "-o", out, "--batch-size", "16", "-j", "1")
    assert final.returncode == EXIT_OK
    assert f"labelled {N_FILES - kept:,} new or changed files" in final.stderr
    assert len(read_table(out)[1]) == N_FILES


# --- train ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tone_manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tones")
    lines = ["path,label"]
    for i in range(24):
        label, freq = ("low", 300) if i % 2 else ("high", 2500)
        sf.write(root / f"c{i:02d}.wav", tone(freq * (1 + 0.01 * i), 0.5), 16000)
        lines.append(f"c{i:02d}.wav,{label}")
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return root / "m.csv"


def history_epochs(run: Path) -> list[int]:
    path = run / "history.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_train_killed_mid_epoch_resumes_from_the_last_completed_epoch(tone_manifest, tmp_path):
    run = tmp_path / "run"
    flags = ("--val", tone_manifest, "-o", run, "--epochs", "6", "--hidden", "16", "--layers", "1", "--batch-size", "4", "-q")
    holds = tmp_path / "holds"
    # 24 clips in batches of 4: six steps an epoch, so step 15 is the middle of epoch 3.
    training = start_held("train-step#15", holds, "train", tone_manifest, *flags)
    held_pid("train-step", holds, training)
    training.send_signal(signal.SIGKILL)
    training.communicate()
    done = history_epochs(run)
    assert done == [1, 2]
    # Whatever the moment of the kill, both checkpoints are whole files that load.
    last = load_checkpoint(run / "last.pt")
    # history.csv is written just after last.pt, so a kill between the two leaves it one epoch behind;
    # --resume rewrites it from the history last.pt carries.
    assert last.training_state["epoch"] in (len(done), len(done) + 1)
    load_checkpoint(run / "best.pt").build()
    (run / ".last.pt.0123456789ab.tmp").write_bytes(b"half a checkpoint")  # as a kill inside save leaves it
    resumed = run_cli("train", tone_manifest, *flags, "--resume")
    assert resumed.returncode == EXIT_OK, resumed.stderr
    assert history_epochs(run) == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(run / "last.pt").training_state["epoch"] == 6
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # a killed writer's temporaries are cleaned


# --- outputs that cannot be written -------------------------------------------------------------


def _chattr(flag: str, path: Path) -> str | None:
    """None when chattr worked, else why not (no chattr, or a file system without the attribute)."""
    if shutil.which("chattr") is None:
        return "chattr is not installed"
    result = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True, check=False)
    return None if result.returncode == 0 else f"chattr {flag} failed here: {result.stderr.strip()}"


@pytest.fixture
def previous(tiny_corpus, tmp_path) -> tuple[Path, bytes]:
    """A folder holding the out.csv of an earlier run over one clip."""
    out = tmp_path / "out" / "out.csv"
    assert run_cli("label", tiny_corpus / "part00" / "clip0000.wav", "-o", out, "-q").returncode == EXIT_OK
    return out, out.read_bytes()


def test_an_output_that_cannot_be_replaced_is_a_clear_error_and_the_previous_one_is_kept(tiny_corpus, previous, request):
    out, before = previous
    why = _chattr("+i", out)  # immutable: even root cannot rename over it
    if why:
        pytest.skip(why)
    request.addfinalizer(lambda: _chattr("-i", out))
    result = run_cli("label", tiny_corpus / "part00", "-o", out, "-q")
    assert result.returncode == EXIT_ERROR
    assert result.stderr == (
        f"error: {out}: cannot write the output (Operation not permitted); the previous out.csv is unchanged "
        f"and labelled files are kept in {out}.journal: fix that and run the same command again\n"
    )
    assert out.read_bytes() == before
    assert not [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    _chattr("-i", out)
    again = run_cli("label", tiny_corpus / "part00", "-o", out)
    assert again.returncode == EXIT_OK
    assert "labelled 0 new or changed files" in again.stderr  # the journal kept the work


def test_a_read_only_folder_is_a_clear_error_and_the_previous_output_is_kept(tiny_corpus, previous, request):
    out, before = previous
    why = _chattr("+i", out.parent)
    if why:
        pytest.skip(why)
    request.addfinalizer(lambda: _chattr("-i", out.parent))
    result = run_cli("label", tiny_corpus / "part00", "-o", out, "-q")
    assert result.returncode == EXIT_ERROR
    # The lock file or the journal, the first file it must create (the previous run removed its lock file).
    assert result.stderr.startswith((f"error: {out}.", f"error: {out}: cannot create its lock file"))
    assert result.stderr.count("\n") == 1
    assert out.read_bytes() == before


def test_a_file_where_the_output_folder_should_be_is_a_clear_error(tiny_corpus, tmp_path):
    (tmp_path / "blocker").write_text("not a folder")
    result = run_cli("label", tiny_corpus / "part00", "-o", tmp_path / "blocker" / "out.csv", "-q")
    assert result.returncode == EXIT_ERROR
    assert result.stderr.startswith(f"error: {tmp_path / 'blocker' / 'out.csv'}: cannot create its lock file")


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KiB tmpfs: room for a one-file run, not for the journal of 2,000 files."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root and CAP_SYS_ADMIN): {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_a_clear_error_and_the_previous_output_is_kept(tiny_corpus, small_disk):
    out = small_disk / "out.csv"
    assert run_cli("label", tiny_corpus / "part00" / "clip0000.wav", "-o", out, "-q").returncode == EXIT_OK
    before = out.read_bytes()
    result = run_cli("label", tiny_corpus, "-o", out, "-q")
    assert result.returncode == EXIT_ERROR
    assert result.stderr in (
        f"error: {out}.journal: cannot record results (database or disk is full); {out} is unchanged: free space and run the same command again\n",
        (
            f"error: {out}: cannot write the output (No space left on device); the previous out.csv is unchanged "
            f"and labelled files are kept in {out}.journal: fix that and run the same command again\n"
        ),
    )
    assert out.read_bytes() == before
