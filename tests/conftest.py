"""Shared fixtures: real audio files written to disk, real espeak-ng speech where it matters."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
# Tests label files they wrote a moment ago: --settle's default would leave them to a next run.
# Every kwsbatch the tests start inherits this; tests of --settle itself set it or the flag.
os.environ["KWSBATCH_SETTLE"] = "0"
HAVE_ESPEAK = shutil.which("espeak-ng") is not None
WORDS = ("yes", "no", "up", "down")
# The notebook's model, which the defaults (mean pooling over a convolution) no longer are: the tests
# that check the packed LSTM against a plain one pin it.
NOTEBOOK = dict(pooling="last", conv_channels=0)
# Voice settings (voice+variant, words per minute, pitch): a word's clips differ in voice, speed and pitch.
VOICES = [
    (f"{voice}+{variant}", rate, pitch)
    for voice in ("en-us", "en-gb", "en-gb-scotland")
    for variant, rate, pitch in (("m1", 150, 40), ("f2", 175, 60), ("m3", 130, 30), ("f4", 190, 70))
]


def interruptible() -> None:
    """preexec_fn for a child that a test interrupts: SIGINT back to its default action.

    A shell starts background jobs with SIGINT ignored, and Python then never turns SIGINT into
    KeyboardInterrupt: a suite run with `&` (or from a CI script that does) would see the child
    ignore the test's Ctrl-C. The child must meet SIGINT as a terminal's Ctrl-C delivers it.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args: str, cwd: Path | None = None, check: bool = False, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real entry point (`python -m kwsbatch`) in a subprocess."""
    # One math thread unless the caller's environment says otherwise: the test models are tiny, and on
    # a busy 2-core machine OpenMP threads spin against other processes (a 9 s training took 2 min).
    env = {"OMP_NUM_THREADS": "1", **os.environ, "COLUMNS": "200", **(env_extra or {})}
    result = subprocess.run(
        [sys.executable, "-m", "kwsbatch", *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kwsbatch {' '.join(map(str, args))} exited {result.returncode}\n{result.stderr}")
    return result


def run_main(*args: str, cwd: Path | None = None, check: bool = False, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """The real entry point in this process: kwsbatch.cli.main(argv), with its output and exit status.

    Returns what run_cli does. For everything but behaviour that needs a process of its own
    (signals, kills, what a fresh interpreter imports): no interpreter to start, no torch to import.
    """
    import torch

    from kwsbatch.cli import main
    from kwsbatch.files.loader import one_torch_thread

    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(_environment({"COLUMNS": "200", **(env_extra or {})}))
        # As run_cli's OMP_NUM_THREADS=1: tiny test models, and torch's threads spin against other processes.
        stack.enter_context(one_torch_thread(torch.device("cpu")))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            status = main([str(a) for a in args])
        except SystemExit as e:  # argparse: usage errors and --help
            status = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    result = subprocess.CompletedProcess(["kwsbatch", *map(str, args)], status, out.getvalue(), err.getvalue())
    if check and status != 0:
        raise AssertionError(f"kwsbatch {' '.join(map(str, args))} exited {status}\n{result.stderr}")
    return result


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def tone(freq: float, seconds: float, rate: int = 16000, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def flac_claiming(path: Path, total_frames: int) -> None:
    """A 1 s FLAC whose STREAMINFO claims total_frames frames (36 bits)."""
    sf.write(path, tone(440, 1.0), 16000, format="FLAC")
    data = bytearray(path.read_bytes())
    info = 8  # "fLaC", then a 4-byte block header; total samples are the low 36 bits of STREAMINFO bytes 10-17
    packed = int.from_bytes(data[info + 10 : info + 18], "big")
    packed = (packed & ~((1 << 36) - 1)) | total_frames
    data[info + 10 : info + 18] = packed.to_bytes(8, "big")
    path.write_bytes(bytes(data))


def speak(word: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """espeak-ng speech as float32 at 16 kHz, placed in a 1 s clip."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", word], capture_output=True, check=True
    ).stdout
    samples, sr = sf.read(io.BytesIO(wav), dtype="float32")
    import torch
    import torchaudio

    samples = torchaudio.functional.resample(torch.from_numpy(samples), sr, 16000).numpy()
    voiced = np.flatnonzero(np.abs(samples) > 0.02)
    samples = samples[voiced[0] : voiced[-1] + 1] if len(voiced) else samples
    clip = np.zeros(16000, dtype=np.float32)
    clip[800 : 800 + min(len(samples), 15200)] = samples[:15200]
    return clip


def synthetic_word(word: str, index: int) -> np.ndarray:
    """A distinct signal per word when espeak-ng is absent: a chirp whose band depends on the word."""
    base = 300 + 400 * WORDS.index(word)
    t = np.arange(16000) / 16000
    rng = np.random.default_rng(index)
    sweep = base * (1 + 0.5 * t) * rng.uniform(0.9, 1.1)
    return (0.3 * np.sin(2 * np.pi * np.cumsum(sweep) / 16000) + 0.01 * rng.standard_normal(16000)).astype(np.float32)


@pytest.fixture(scope="session")
def speech_corpus(tmp_path_factory) -> Path:
    """A small labelled corpus: 4 words x 12 voice settings, split by voice into train.csv and test.csv."""
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for word in WORDS:
        (root / word).mkdir()
        for i, (voice, rate, pitch) in enumerate(VOICES):
            audio = speak(word, voice, rate, pitch) if HAVE_ESPEAK else synthetic_word(word, i)
            name = f"{word}/v{i:02d}.wav"
            sf.write(root / name, audio, 16000, subtype="PCM_16")
            rows.append({"path": name, "label": word, "speaker": f"v{i:02d}", "split": "test" if i % 4 == 3 else "train"})
    for split in ("train", "test"):
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(r for r in rows if r["split"] == split)
    return root


@pytest.fixture(scope="session")
def trained_model(speech_corpus, tmp_path_factory) -> Path:
    """A small model trained through the real CLI on the speech corpus; shared by label/evaluate tests."""
    run = tmp_path_factory.mktemp("run")
    run_main(
        "train", speech_corpus / "train.csv", "-o", run, "--epochs", "25", "--batch-size", "8",
        "--hidden", "32", "--layers", "2", "--pooling", "mean", "--lr", "3e-3", "--val-fraction", "0.25", "-q",
        check=True,
    )
    return run / "best.pt"
