"""What every text-to-speech engine shares: the error, a voice setting, the Engine protocol, and
helpers to run a synthesizer program or an ONNX model."""

from __future__ import annotations

import hashlib
import io
import subprocess
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import soundfile as sf

from kwsbatch.errors import KwsError


class SynthError(KwsError):
    """A corpus cannot be synthesized: bad options, a missing engine, or an engine failure."""


@dataclass(frozen=True)
class VoiceSetting:
    """One way an engine can speak: a voice plus its parameters; hashes to a stable speaker id."""

    engine: str
    voice: str
    params: tuple[tuple[str, int | float], ...] = ()

    @property
    def speaker(self) -> str:
        # hashlib, not hash(): ids (and so splits) must not change between processes.
        key = repr((self.engine, self.voice, self.params)).encode()
        return f"{self.engine}_{hashlib.sha1(key).hexdigest()[:8]}"

    def describe(self) -> str:
        return " ".join([f"voice={self.voice}"] + [f"{k}={v}" for k, v in self.params])


class Engine(Protocol):
    """A TTS engine. Adding one is a module with a class like this plus an entry in ENGINE_TYPES."""

    name: str
    weight: float  # relative share of the voice settings when several engines are used

    def voice_settings(self, rng: np.random.Generator, n: int) -> list[VoiceSetting]:
        """n settings sampled with rng, cycling through the engine's voices evenly."""

    def speak(self, text: str, setting: VoiceSetting, *, tempo: float = 1.0,
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        """Float32 mono waveform (samples,) and its sample rate; tempo > 1 speaks faster.

        rng feeds engines that sample while they speak (Piper); the others ignore it. The audio
        is a pure function of (text, setting, tempo, rng's state): never of earlier calls.
        """


def run_program(cmd: Sequence[str], what: str, stdin: str | None = None) -> bytes:
    """A synthesizer's stdout; SynthError naming `what` and its first stderr line on failure."""
    try:
        done = subprocess.run(cmd, input=stdin.encode() if stdin else None, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SynthError(f"{what} failed: {e}") from None
    if done.returncode != 0 or not done.stdout:
        reason = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[0]
        raise SynthError(f"{what} failed: {reason}")
    return done.stdout


def decode_wav(data: bytes, what: str) -> tuple[np.ndarray, int]:
    """A WAV file's bytes as a float32 mono waveform (samples,) and its sample rate."""
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except RuntimeError as e:
        raise SynthError(f"{what} wrote unreadable audio: {e}") from None
    return audio.mean(axis=1), sr


def onnx_session(model: bytes, *, log_severity: int = 2):
    """A CPU onnxruntime session with one thread: synth runs clips in parallel itself (`jobs`),
    and one thread keeps every run's floating-point sums in the same order."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_severity
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
