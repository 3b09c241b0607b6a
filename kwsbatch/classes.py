"""What a class name says about a class: a keyword, or a background class such as `_unknown_`."""

from __future__ import annotations


def is_background(label: str) -> bool:
    """Named in underscores (`_unknown_`, `_silence_`): not a keyword, never a detection or a hit."""
    return len(label) > 1 and label.startswith("_") and label.endswith("_")
