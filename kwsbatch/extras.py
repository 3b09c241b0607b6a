"""Optional extras (setup.cfg's extras_require): the command that installs one, for this kind of install.

kwsbatch is not on a package index, so `pip install 'kwsbatch[onnx]'` helps only where kwsbatch
itself came from one. A checkout (the package imported from a source tree with setup.cfg beside
it: bin/kwsbatch's editable install, or PYTHONPATH) installs an extra from that tree instead.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def install_command(extra: str, *, package: str | os.PathLike = _PACKAGE) -> str:
    """The shell command that installs extra for the kwsbatch package at `package` (this one by default)."""
    checkout = Path(package).parent
    if (checkout / "setup.cfg").is_file():
        quoted = str(checkout).replace("'", "'\\''")
        return f"pip install -e '{quoted}[{extra}]'"
    return f"pip install 'kwsbatch[{extra}]'"

