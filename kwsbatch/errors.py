"""One error family, so the CLI can turn any failure into a single `error: ...` line."""


class KwsError(Exception):
    """A failure the user can act on; the message says what failed, where, and what to try."""


class ManifestError(KwsError):
    """A manifest is missing, malformed, or names rows the command cannot use."""


class AudioError(KwsError):
    """An audio file cannot be decoded into a usable waveform."""


class CheckpointError(KwsError):
    """A model file is missing, corrupt, foreign, or of an unsupported format."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was kept and how to finish: the CLI prints the message and exits 130."""
