"""`--shard K/N`: the deterministic 1/N of a label run's inputs that array task K labels.

A file belongs to shard ``hash(path) mod N``, with the hash taken over the path exactly as the
output writes it (a folder's scan path, a manifest's ``path`` field). It depends on nothing but
that text: not on input order, the other files, the machine or the Python version (``hash()`` of
a str is salted per process, so blake2b instead). An array of N tasks given the same inputs and
K = 0 .. N-1 therefore covers every input row exactly once, and ``kwsbatch merge`` joins them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kwsbatch.settings import SettingError

if TYPE_CHECKING:  # light to import: label/config.py checks --shard before the heavy modules load
    from kwsbatch.files.manifest import ManifestRow


@dataclass(frozen=True)
class Shard:
    index: int  # K: 0 .. count-1 (Slurm's SLURM_ARRAY_TASK_ID with --array=0-<N-1>, Kubernetes' JOB_COMPLETION_INDEX)
    count: int  # N: tasks in the array

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise SettingError("shard", f"K/N needs N >= 1 and 0 <= K < N, got {self.index}/{self.count}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'K/N' as given to --shard (ValueError with a one-line message when malformed)."""
        k, slash, n = text.partition("/")
        try:
            if not slash:
                raise ValueError
            index, count = int(k), int(n)
        except ValueError:
            raise SettingError("shard", f"takes K/N with whole numbers, e.g. 0/8; got {text!r}") from None
        return cls(index, count)

    def holds(self, path: str) -> bool:
        return shard_of(path, self.count) == self.index


def shard_of(path: str, count: int) -> int:
    """The shard, of count, that labels path."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def select_shard(rows: Iterable[ManifestRow], shard: Shard | None) -> Iterator[ManifestRow]:
    """The rows this shard labels (all of them without a shard)."""
    if shard is None or shard.count == 1:
        yield from rows
        return
    for row in rows:
        if shard.holds(row.path):
            yield row
