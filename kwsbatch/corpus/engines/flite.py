"""flite: its general-domain voices, duration stretch and mean pitch varied."""

from __future__ import annotations

import shutil

import numpy as np

from kwsbatch.corpus.engines.base import SynthError, VoiceSetting, decode_wav, run_program


class FliteEngine:
    """flite: its general-domain voices, rate and mean pitch varied with --setf."""

    name = "flite"
    weight = 1.0  # few voices, so a small share keeps them from dominating the speakers
    # awb_time only knows how to say the time of day.
    LIMITED_DOMAIN = frozenset({"awb_time"})
    # Typical mean F0 per voice, Hz; pitch is sampled around it (rms ignores the setting).
    F0 = {"slt": 170}
    DEFAULT_F0 = 105

    def __init__(self):
        if shutil.which("flite") is None:
            raise SynthError("flite not found: install it with `apt-get install flite`")
        listing = run_program(["flite", "-lv"], "flite -lv").decode()
        names = listing.split(":", 1)[-1].split()
        self.voices = [v for v in names if v not in self.LIMITED_DOMAIN]
        if not self.voices:
            raise SynthError("flite lists no general-domain voice")

    def voice_settings(self, rng: np.random.Generator, n: int) -> list[VoiceSetting]:
        order = rng.permutation(len(self.voices))
        settings = []
        for i in range(n):
            voice = self.voices[order[i % len(self.voices)]]
            f0 = self.F0.get(voice, self.DEFAULT_F0)
            params = (
                ("stretch", round(float(rng.uniform(0.8, 1.25)), 2)),
                ("f0", int(round(f0 * rng.uniform(0.8, 1.25)))),
            )
            settings.append(VoiceSetting(self.name, voice, params))
        return settings

    def speak(self, text: str, setting: VoiceSetting, *, tempo: float = 1.0,
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        p = dict(setting.params)
        cmd = ["flite", "-voice", setting.voice,
               "--setf", f"duration_stretch={p['stretch'] / tempo:.3f}",
               "--setf", f"int_f0_target_mean={p['f0']}", "-t", text, "-o", "/dev/stdout"]
        return decode_wav(run_program(cmd, f"flite -voice {setting.voice} on {text!r}"), "flite")
