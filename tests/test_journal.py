"""journal.py: what a killed run leaves is resumed only with the same settings and previous output."""

import pytest

from kwsbatch.errors import KwsError
from kwsbatch.label.journal import Journal, file_identity, journal_path, remove_journal

SETTINGS = {"model": "abc", "columns": ["path", "label"], "window": None}


def test_a_journal_is_resumed_with_the_same_settings_and_discarded_with_others(tmp_path):
    out = tmp_path / "out.csv"
    path = journal_path(out)
    journal = Journal.open(path, SETTINGS, out)
    assert not journal.resumed and path == tmp_path / "out.csv.journal"
    journal.record([(("a.wav", ""), (10, 20), [["yes", "0.9"]]), (("b.wav", ""), None, [["", ""]])])
    journal.close()  # as a killed run leaves it

    again = Journal.open(path, SETTINGS, out)
    assert again.resumed and again.labelled_count() == 2
    assert again.lookup(("a.wav", ""), (10, 20)) == "journal"
    assert again.lookup(("a.wav", ""), (10, 21)) is None  # the file changed since
    assert again.lookup(("b.wav", ""), None) is None  # a file that could not be stat'ed is always labelled
    again.close()

    other = Journal.open(path, {**SETTINGS, "model": "def"}, out)
    assert not other.resumed and other.labelled_count() == 0
    other.close()


def test_a_journal_made_before_the_previous_output_changed_is_discarded(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("path\n")
    journal = Journal.open(journal_path(out), SETTINGS, out)
    journal.record([(("a.wav", ""), (1, 2), [["x"]])])
    journal.close()
    out.write_text("path,label\n")  # someone replaced the output in between
    assert not Journal.open(journal_path(out), SETTINGS, out).resumed


def test_a_damaged_journal_is_replaced(tmp_path):
    out = tmp_path / "out.csv"
    journal_path(out).write_bytes(b"this is not an SQLite file at all" * 100)
    journal = Journal.open(journal_path(out), SETTINGS, out)
    assert not journal.resumed and journal.labelled_count() == 0
    journal.close()
    remove_journal(journal_path(out))
    assert list(tmp_path.iterdir()) == []


def test_imported_rows_lose_to_labelled_ones_and_force_forgets_them(tmp_path):
    out = tmp_path / "out.csv"
    journal = Journal.open(journal_path(out), SETTINGS, out)
    journal.record([(("a.wav", ""), (1, 1), [["new"]])])
    assert journal.import_previous([(("a.wav", ""), 1, 1, [["old"]]), (("b.wav", ""), 2, 2, [["old"]])]) == 1
    assert journal.imported
    assert (journal.lookup(("a.wav", ""), (1, 1)), journal.lookup(("b.wav", ""), (2, 2))) == ("journal", "previous")
    journal.forget_imported()
    assert journal.lookup(("b.wav", ""), (2, 2)) is None and journal.lookup(("a.wav", ""), (1, 1)) == "journal"
    journal.close()


def test_inputs_keep_their_order_and_one_row_per_path(tmp_path):
    out = tmp_path / "out.csv"
    journal = Journal.open(journal_path(out), SETTINGS, out)
    assert journal.add_input(("b.wav", ""), "/x/b.wav", "list.csv line 2", ["s1"])
    assert journal.add_input(("a.wav", ""), "/x/a.wav", "list.csv line 3", ["s2"])
    assert not journal.add_input(("b.wav", ""), "/x/b.wav", "list.csv line 4", ["s3"])  # the same file again
    with pytest.raises(KwsError, match=r"other.csv line 2: path 'a.wav' is also given by list.csv line 3 for another file \(/x/a.wav\)"):
        journal.add_input(("a.wav", ""), "/y/a.wav", "other.csv line 2", [])
    journal.record([(("a.wav", ""), (1, 2), [["yes"]]), (("b.wav", ""), (3, 4), [["no"], ["up"]])])
    assert list(journal.output()) == [("b.wav", ["s1"], (3, 4), [["no"], ["up"]]), ("a.wav", ["s2"], (1, 2), [["yes"]])]
    journal.close()


def test_file_identity_is_size_and_mtime_or_none(tmp_path):
    (tmp_path / "f").write_bytes(b"12345")
    size, mtime_ns = file_identity(tmp_path / "f")
    assert size == 5 and mtime_ns == (tmp_path / "f").stat().st_mtime_ns
    assert file_identity(tmp_path / "missing") is None


def test_any_name_is_a_key_and_segments_are_apart_from_the_path(tmp_path):
    # The separator the journal once kept inside its key, a name that is not UTF-8, and two
    # segments of one file: each its own entry, and the output gives back the exact names.
    out = tmp_path / "out.csv"
    journal = Journal.open(journal_path(out), SETTINGS, out)
    odd, latin1 = "a\x1fb.wav", b"caf\xe9.wav".decode("utf-8", "surrogateescape")
    keys = [(odd, ""), (latin1, ""), ("long.wav", "0.0 1.0"), ("long.wav", "5.0 1.0")]
    for n, key in enumerate(keys):
        assert journal.add_input(key, f"/x/{key[0]}", f"line {n}", [])
    journal.record([(key, (n, n), [[str(n)]]) for n, key in enumerate(keys)])
    assert [(path, rows) for path, _, _, rows in journal.output()] == [(odd, [["0"]]), (latin1, [["1"]]), ("long.wav", [["2"]]), ("long.wav", [["3"]])]
    assert journal.lookup((latin1, ""), (1, 1)) == "journal" and journal.lookup(("a", ""), (0, 0)) is None
    journal.close()
