"""The corpus commands' settings: what `kwsbatch synth` makes, and how much `kwsbatch check` lists.

No torch or pandas here, so that their --help shows the defaults at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kwsbatch.corpus.engines.base import SynthError

MAX_LISTED = 1000  # problem files `check` lists in its JSON report, per kind; the counts are always complete


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesize; field names match the flags of `kwsbatch synth`."""

    words: tuple[str, ...]
    per_word: int = 300
    # None -> 2 * per_word: _unknown_ stands for all other speech, the commonest false alarm.
    unknown: int | None = None
    # None -> per_word: one more class of the same size as a keyword.
    silence: int | None = None
    unknown_words: tuple[str, ...] | None = None  # None -> the bundled common-word list
    # Voice settings (pseudo-speakers). None -> per_word (at least one per split per engine), so
    # each says each keyword about once.
    speakers: int | None = None
    engines: tuple[str, ...] | None = None  # None -> every installed engine
    seed: int = 0
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self):
        words = tuple(w.strip().lower() for w in self.words)
        if not words:
            raise SynthError("no keywords given: pass --words, e.g. --words yes,no")
        for word in words:
            if not re.fullmatch(r"[a-z]+(?:['-][a-z]+)*", word):
                raise SynthError(f"keyword {word!r} is not a single English word (letters, ' or -)")
        if len(set(words)) != len(words):
            raise SynthError(f"keywords repeat: {','.join(words)}")
        object.__setattr__(self, "words", words)
        if self.per_word < 1:
            raise SynthError(f"per_word must be at least 1, got {self.per_word}")
        for name in ("unknown", "silence"):
            if (getattr(self, name) or 0) < 0:
                raise SynthError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.seed < 0:
            raise SynthError(f"seed must be >= 0, got {self.seed}")
        if self.sample_rate < 8000 or self.clip_seconds <= 0:
            raise SynthError("sample_rate must be >= 8000 and clip_seconds > 0")
        if (len(self.splits) != 3 or min(self.splits) < 0 or self.splits[0] <= 0
                or abs(sum(self.splits) - 1) > 1e-6):
            raise SynthError(f"splits must be 3 fractions (train>0, val, test) summing to 1, got {self.splits}")

    @property
    def n_unknown(self) -> int:
        return 2 * self.per_word if self.unknown is None else self.unknown

    @property
    def n_silence(self) -> int:
        return self.per_word if self.silence is None else self.silence

    @property
    def n_clips(self) -> int:
        """Clips `synthesize_corpus` writes (for a progress bar's total)."""
        return len(self.words) * self.per_word + self.n_unknown + self.n_silence

    @property
    def clip_samples(self) -> int:
        return round(self.sample_rate * self.clip_seconds)
