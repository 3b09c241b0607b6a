"""What a wake-word `evaluate` run is asked to do, light to import (no torch, no pandas): its flags are built from it."""

from __future__ import annotations

from dataclasses import dataclass

from kwsbatch.files.windowing import WindowConfig


@dataclass(frozen=True)
class WakewordConfig:
    """Field names match `kwsbatch evaluate`'s flags."""

    window: float = 1.0  # seconds of audio the model hears at once (the clips it was trained on are 1 s)
    hop: float | None = None  # seconds between windows; None: half the window
    target_fa_per_hour: float = 1.0  # the false accepts per hour the operating threshold may reach

    def __post_init__(self):
        if not self.target_fa_per_hour >= 0:
            raise ValueError(f"--target-fa-per-hour must be at least 0, got {self.target_fa_per_hour:g}")
        self.windows()  # WindowConfig checks --window and --hop

    def windows(self) -> WindowConfig:
        """The window settings, at threshold 0: every window's best class is kept, and thresholds applied after."""
        return WindowConfig(self.window, self.hop if self.hop is not None else self.window / 2)
