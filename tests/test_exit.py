"""How the kwsbatch process ends: the exit status and every flushed byte, without the interpreter's teardown
unless a thread still runs (kwsbatch/cli/exit.py), in real child processes."""

import subprocess
import sys
import textwrap
from pathlib import Path

import soundfile as sf
from conftest import run_cli, tone

# A child that leaves unflushed output, an atexit handler and an object whose finaliser only the
# interpreter's teardown runs, then ends through exit_now.
CHILD = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from pathlib import Path
    from kwsbatch.cli.exit import exit_now

    folder = Path(sys.argv[1])

    class Finalised:
        def __del__(self):
            (folder / "teardown").write_text("ran")

    kept = Finalised()
    atexit.register(lambda: (folder / "atexit").write_text("ran"))
    if sys.argv[2] == "thread":
        threading.Thread(target=lambda: (time.sleep(0.3), (folder / "thread").write_text("ran"))).start()
    sys.stdout.write("out, no newline")
    sys.stderr.write("err, no newline")
    exit_now(int(sys.argv[3]))
    """
)


def end_child(folder: Path, mode: str, code: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(folder), mode, str(code)], capture_output=True, text=True, timeout=60)


def test_exit_now_flushes_runs_atexit_and_skips_the_teardown(tmp_path):
    result = end_child(tmp_path, "alone", 3)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out, no newline", "err, no newline")
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not (tmp_path / "teardown").exists()


def test_exit_now_leaves_the_ending_to_python_while_a_thread_runs(tmp_path):
    result = end_child(tmp_path, "thread", 4)
    assert (result.returncode, result.stdout, result.stderr) == (4, "out, no newline", "err, no newline")
    assert (tmp_path / "thread").read_text() == "ran"  # the thread was waited for
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "teardown").read_text() == "ran"


def test_the_program_writes_its_whole_output_to_a_pipe_and_exits_with_its_status(tmp_path):
    clips = [tmp_path / f"tone{i}.wav" for i in range(3)]
    for i, clip in enumerate(clips):
        sf.write(clip, tone(300 + 100 * i, 1.0), 16000)
    labelled = run_cli("label", *clips, "-o", "-", "--settle", "0", "-q")
    assert labelled.returncode == 0, labelled.stderr
    lines = labelled.stdout.splitlines()
    assert lines[0].startswith("path,label,confidence") and len(lines) == 1 + len(clips)
    assert [line.split(",")[0] for line in lines[1:]] == [str(clip) for clip in clips]
    missing = run_cli("label", str(tmp_path / "absent.wav"), "-o", str(tmp_path / "out.csv"), "--settle", "0", "-q")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "absent.wav" in missing.stderr
