"""How long recordings are cut into windows: light to import (no numpy), so the command line can
check the settings before the audio stack loads (files/windows.py reads the windows)."""

from __future__ import annotations

from dataclasses import dataclass

from kwsbatch.settings import SettingError


@dataclass(frozen=True)
class WindowConfig:
    window_s: float  # seconds of audio the model hears at once
    hop_s: float  # seconds between window starts; <= window_s, so no audio is skipped
    threshold: float = 0.0  # the least probability of its keyword a window needs to count toward a detection

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise SettingError("threshold", f"must be a probability in [0, 1], got {self.threshold:g}")
        if not self.window_s > 0:
            raise SettingError("window", f"must be positive, got {self.window_s:g}")
        if not 0 < self.hop_s <= self.window_s:
            raise SettingError("hop", f"must be positive and at most --window ({self.window_s:g} s), got {self.hop_s:g}")

    def frames(self, sample_rate: int) -> tuple[int, int]:
        """(window, hop) in frames at sample_rate."""
        return max(1, round(self.window_s * sample_rate)), max(1, round(self.hop_s * sample_rate))
