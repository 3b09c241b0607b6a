"""festival (through text2wave): its English diphone and HTS voices, rate and pitch varied."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from kwsbatch.corpus.engines.base import SynthError, VoiceSetting, decode_wav, run_program


class FestivalEngine:
    """festival (via text2wave): its English voices (festvox kal and ked diphones, the HTS voice
    slt, ...), speaking rate and mean pitch varied."""

    name = "festival"
    weight = 1.0  # a handful of voices, like flite
    # Voices live in <festival>/voices/<language>/<voice>/; these language folders are English.
    ENGLISH = frozenset({"english", "us", "uk", "british", "american", "scottish"})

    def __init__(self):
        if shutil.which("festival") is None or shutil.which("text2wave") is None:
            raise SynthError("festival not found: install it with `apt-get install festival festvox-kallpc16k`")
        listing = run_program(["festival", "--pipe"], "festival", "(print voice-locations)\n").decode()
        # ((kal_diphone . "/usr/share/festival/voices/english/kal_diphone/") ...)
        located = re.findall(r'\((\w+) \. "([^"]*)"\)', listing)
        english = sorted(v for v, path in located if Path(path).parent.name in self.ENGLISH)
        self.voices, self.skipped = [], []
        for voice in english:
            try:  # a voice whose data is incomplete fails only when it speaks
                self.speak("test", VoiceSetting(self.name, voice, (("stretch", 1.0),)))
                self.voices.append(voice)
            except SynthError:
                self.skipped.append(voice)
        if not self.voices:
            tried = f" (tried {', '.join(self.skipped)})" if self.skipped else ""
            raise SynthError(f"festival has no working English voice{tried}: install festvox-kallpc16k")

    def voice_settings(self, rng: np.random.Generator, n: int) -> list[VoiceSetting]:
        order = rng.permutation(len(self.voices))
        settings = []
        for i in range(n):
            voice = self.voices[order[i % len(self.voices)]]
            stretch = round(float(rng.uniform(0.85, 1.3)), 2)  # duration factor; voices default to ~1.1
            f0 = round(float(rng.uniform(0.8, 1.25)), 2)  # times the voice's own mean pitch
            # HTS voices have no pitch knob here; leaving f0 out keeps equal-sounding settings one speaker.
            params = (("stretch", stretch),) if self._is_hts(voice) else (("stretch", stretch), ("f0", f0))
            settings.append(VoiceSetting(self.name, voice, params))
        return settings

    @staticmethod
    def _is_hts(voice: str) -> bool:
        return voice.endswith("_hts")  # festvox's naming for voices made with HTS

    def speak(self, text: str, setting: VoiceSetting, *, tempo: float = 1.0,
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        p = dict(setting.params)
        stretch = p["stretch"] / tempo
        if self._is_hts(setting.voice):
            # HTS voices time themselves and ignore Duration_Stretch; hts_engine's -r is a speed factor.
            tweak = f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {1 / stretch:.3f}))))'
        else:
            tweak = (f"(Parameter.set 'Duration_Stretch {stretch:.3f}) "
                     "(if (assoc 'target_f0_mean int_lr_params) (set! int_lr_params (cons (list 'target_f0_mean "
                     f"(* {p.get('f0', 1.0):.3f} (car (cdr (assoc 'target_f0_mean int_lr_params))))) int_lr_params)))")
        what = f"festival voice {setting.voice} on {text!r}"
        with tempfile.TemporaryDirectory(prefix="kwsbatch-festival-") as tmp:
            # A file, not stdout: text2wave writes its WAV header before knowing the data size.
            out = Path(tmp) / "speech.wav"
            cmd = ["text2wave", "-eval", f"(begin (voice_{setting.voice}) {tweak})", "-o", str(out)]
            try:
                done = subprocess.run(cmd, input=text.encode(), capture_output=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise SynthError(f"{what} failed: {e}") from None
            # Festival reports Scheme errors on stderr and still exits 0, writing no file.
            if done.returncode != 0 or not out.is_file() or out.stat().st_size <= 44:
                reason = (done.stderr.decode(errors="replace").strip().splitlines() or ["no audio written"])[0]
                raise SynthError(f"{what} failed: {reason}")
            return decode_wav(out.read_bytes(), "festival")
