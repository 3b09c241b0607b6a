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


def test_the_lock_file_is_removed_when_its_holder_ends_however_the_block_ends(tmp_path):
    out = tmp_path / "out.csv"
    with output_lock(out) as path:
        assert path.is_file()
    assert not path.exists()
    with pytest.raises(RuntimeError):
        with output_lock(out):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_run_queued_on_a_removed_lock_file_locks_the_new_one(tmp_path):
    """The second run opened the lock file before the first removed it: once it gets that lock it
    must not go on holding a file no later run can see, or a third run would hold the lock too."""
    import threading

    out = tmp_path / "out.csv"
    first_holds, second_waits = threading.Event(), threading.Event()
    outcome = {}

    def first():
        with output_lock(out):
            first_holds.set()
            second_waits.wait(timeout=60)

    def second():
        first_holds.wait(timeout=60)
        with output_lock(out, wait=True, on_wait=lambda message: second_waits.set()) as path:
            # The path names the file this run holds: a third run is refused.
            try:
                with output_lock(out):
                    outcome["third"] = "locked too"
            except LockedError:
                outcome["third"] = "refused"
            outcome["held"] = path.is_file()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outcome == {"third": "refused", "held": True}
    assert not lock_path(out).exists()
