"""Text-to-speech engines for `kwsbatch synth`, one module each.

System programs, used by default when installed: espeak-ng (required: it also phonemizes),
flite, festival. Neural engines, optional pip extras used only when named (`--engines`): piper
and kokoro, which take up to ten times the CPU per clip and ~200 MB each.
"""

from __future__ import annotations

import shutil
from typing import Sequence

from kwsbatch.corpus.engines.base import Engine, SynthError, VoiceSetting
from kwsbatch.corpus.engines.espeak import EspeakEngine
from kwsbatch.corpus.engines.festival import FestivalEngine
from kwsbatch.corpus.engines.flite import FliteEngine
from kwsbatch.corpus.engines.kokoro import KokoroEngine
from kwsbatch.corpus.engines.piper import PiperEngine

__all__ = ["Engine", "SynthError", "VoiceSetting", "ENGINE_TYPES", "DEFAULT_ENGINES", "available_engines"]

ENGINE_TYPES = {e.name: e for e in (EspeakEngine, FliteEngine, FestivalEngine, PiperEngine, KokoroEngine)}
DEFAULT_ENGINES = (EspeakEngine.name, FliteEngine.name, FestivalEngine.name)


def available_engines(names: Sequence[str] | None = None) -> list[Engine]:
    """The named engines (when None, every installed DEFAULT_ENGINES one that has a working
    English voice); espeak-ng must be installed either way."""
    espeak = EspeakEngine()  # required even when unused: it phonemizes the homophone filter
    if names is None:
        engines: list[Engine] = [espeak]
        for name in DEFAULT_ENGINES[1:]:
            if shutil.which(name):
                try:
                    engines.append(ENGINE_TYPES[name]())
                except SynthError:
                    pass  # installed without a usable English voice: not an engine to default to
        return engines
    unknown = [n for n in names if n not in ENGINE_TYPES]
    if unknown or not names:
        raise SynthError(f"unknown engine {','.join(unknown) or '(none given)'}: choose from {','.join(ENGINE_TYPES)}")
    return [espeak if n == espeak.name else ENGINE_TYPES[n]() for n in dict.fromkeys(names)]
