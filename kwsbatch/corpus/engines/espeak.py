"""espeak-ng: every English accent crossed with every voice variant, rate, pitch and range varied."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from kwsbatch.corpus.engines.base import SynthError, VoiceSetting, decode_wav, run_program


class EspeakEngine:
    """espeak-ng: every English accent crossed with every voice variant (`-v en-us+f3`)."""

    name = "espeak-ng"
    weight = 3.0

    def __init__(self):
        if shutil.which("espeak-ng") is None:
            raise SynthError("espeak-ng not found: install it with `apt-get install espeak-ng`")
        self.voices, self.skipped = self._english_voices()
        if not self.voices:
            raise SynthError(f"espeak-ng has no working English voice (tried {', '.join(self.skipped)})")
        self.variants = self._variants()

    def _english_voices(self) -> tuple[list[str], list[str]]:
        """Voice files (e.g. gmw/en-US) that speak; mbrola voices only if mbrola works."""
        listing = run_program(["espeak-ng", "--voices=en"], "espeak-ng --voices=en").decode()
        voices, skipped = [], []
        for line in listing.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 5 or fields[1] == "variant":
                continue
            voice = fields[4]
            if voice.startswith("mb/") and shutil.which("mbrola") is None:
                skipped.append(voice)
            elif voice not in voices:
                voices.append(voice)
        working = []
        for voice in voices:
            try:  # an mbrola voice whose database is missing exits 0 with no audio
                run_program(["espeak-ng", "-v", voice, "--stdout", "test"], "probe")
                working.append(voice)
            except SynthError:
                skipped.append(voice)
        return working, skipped

    @staticmethod
    def _variants() -> list[str]:
        # Read the variant directory: `--voices=variant` prints names, not the file names `+`
        # needs, and an unknown `+variant` silently falls back to the plain voice.
        version = run_program(["espeak-ng", "--version"], "espeak-ng --version").decode()
        match = re.search(r"Data at:\s*(\S.*)$", version.strip())
        folder = Path(match.group(1).strip()) / "voices" / "!v" if match else None
        if folder is None or not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file())

    def voice_settings(self, rng: np.random.Generator, n: int) -> list[VoiceSetting]:
        variants = [""] + self.variants  # "" is the accent's own voice
        order = rng.permutation(len(self.voices))
        settings = []
        for i in range(n):
            voice = self.voices[order[i % len(self.voices)]]
            variant = variants[rng.integers(len(variants))]
            params = (
                ("rate", int(rng.integers(130, 241))),      # words/min, default 175
                ("pitch", int(rng.integers(15, 86))),       # 0-99, default 50
                ("range", int(rng.integers(40, 161))),      # pitch range, % of the voice's
                ("amplitude", int(rng.integers(70, 141))),  # 0-200, default 100
            )
            settings.append(VoiceSetting(self.name, f"{voice}+{variant}" if variant else voice, params))
        return settings

    def speak(self, text: str, setting: VoiceSetting, *, tempo: float = 1.0,
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        p = dict(setting.params)
        rate = min(450, round(p["rate"] * tempo))
        # This espeak-ng has no -P flag; SSML prosody is how it takes a pitch range.
        ssml = f'<speak><prosody range="{p["range"]}%">{escape(text)}</prosody></speak>'
        cmd = ["espeak-ng", "-m", "-z", "--stdout", "-v", setting.voice, "-s", str(rate),
               "-p", str(p["pitch"]), "-a", str(p["amplitude"]), ssml]
        return decode_wav(run_program(cmd, f"espeak-ng -v {setting.voice} on {text!r}"), "espeak-ng")
