"""lock.py: one holder at a time, a message naming the holder, and release however the holder ends."""

import pytest

from kwsbatch.files.lock import LockedError, lock_path, output_lock


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    out = tmp_path / "out.csv"
    with output_lock(out) as path:
        assert path == lock_path(out) == tmp_path / "out.csv.lock"
        with pytest.raises(LockedError, match=r"out.csv: another kwsbatch run is writing it \(pid \d+, since .*\); this run did nothing"):
            with output_lock(out):
                pass
    with output_lock(out):  # released when the block ended
        pass


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError):
        with output_lock(tmp_path / "o.csv"):
            raise RuntimeError("boom")
    with output_lock(tmp_path / "o.csv"):
        pass
