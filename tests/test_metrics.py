import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kwsbatch.errors import KwsError
from kwsbatch.evaluate.metrics import accuracy, balanced_accuracy, confusion_matrix, evaluate_predictions, macro_f1, per_class_scores
from kwsbatch.train.calibrate import expected_calibration_error

CLASSES = ["yes", "no", "stop"]

# Hand-computed example. Confusion (rows truth, cols predicted; yes, no, stop):
#   yes  [2, 1, 0]     precision yes 2/3, no 1/3, stop 2/2
#   no   [1, 1, 0]     recall    yes 2/3, no 1/2, stop 2/3
#   stop [0, 1, 2]     f1        yes 2/3, no 2/5, stop 4/5
# accuracy 5/8; balanced accuracy (2/3 + 1/2 + 2/3) / 3 = 11/18; macro F1 28/45.
# ECE bins (width 1/15), |sum(correct) - sum(confidence)|:
#   (13/15,14/15]: .90 .92 both right -> .18    (9/15,10/15]: .62 wrong -> .62
#   (10/15,11/15]: .70 right -> .30            (14/15,1]: .95 wrong, .99 right -> .94
#   (7/15,8/15]: .50 right -> .50              (6/15,7/15]: .45 wrong -> .45
#   ECE = 2.99 / 8 = 0.37375
ROWS = [
    # path, truth, predicted, confidence
    ("a.wav", "yes", "yes", 0.90),
    ("b.wav", "yes", "yes", 0.92),
    ("c.wav", "yes", "no", 0.62),
    ("d.wav", "no", "no", 0.70),
    ("e.wav", "no", "yes", 0.95),
    ("f.wav", "stop", "stop", 0.99),
    ("g.wav", "stop", "stop", 0.50),
    ("h.wav", "stop", "no", 0.45),
]


def make_predictions(rows, classes=CLASSES, failures=()):
    """A predictions frame as `kwsbatch evaluate` builds it; failures are (path, truth, error)."""
    records = []
    for path, truth, predicted, confidence in rows:
        rest = (1.0 - confidence) / (len(classes) - 1)
        probabilities = {f"p_{c}": (confidence if c == predicted else rest) for c in classes}
        records.append(
            dict(path=path, true_label=truth, label=predicted, confidence=confidence, error="",
                 **probabilities)
        )
    for path, truth, error in failures:
        records.append(
            dict(path=path, true_label=truth, label="", confidence=np.nan, error=error,
                 **{f"p_{c}": np.nan for c in classes})
        )
    columns = ["path", "true_label", "label", "confidence", "error", *(f"p_{c}" for c in classes)]
    return pd.DataFrame(records, columns=columns)


def test_confusion_matrix_counts_truth_rows_and_predicted_columns():
    truth = [r[1] for r in ROWS]
    predicted = [r[2] for r in ROWS]
    expected = np.array([[2, 1, 0], [1, 1, 0], [0, 1, 2]])
    np.testing.assert_array_equal(confusion_matrix(truth, predicted, CLASSES), expected)


def test_confusion_matrix_rejects_unknown_label_and_duplicates():
    with pytest.raises(ValueError, match="'up' is not in labels"):
        confusion_matrix(["up"], ["yes"], CLASSES)
    with pytest.raises(ValueError, match="duplicates"):
        confusion_matrix([], [], ["yes", "yes"])


def test_hand_computed_three_class_example():
    evaluation = evaluate_predictions(make_predictions(ROWS), CLASSES)

    assert evaluation.labels == ("yes", "no", "stop")
    np.testing.assert_array_equal(evaluation.confusion, [[2, 1, 0], [1, 1, 0], [0, 1, 2]])
    assert evaluation.accuracy == pytest.approx(5 / 8)
    assert evaluation.balanced_accuracy == pytest.approx(11 / 18)
    assert evaluation.macro_f1 == pytest.approx(28 / 45)
    assert evaluation.ece == pytest.approx(0.37375)
    assert (evaluation.n_scored, evaluation.n_failed) == (8, 0)

    per_class = evaluation.per_class.set_index("label")
    np.testing.assert_allclose(per_class["precision"], [2 / 3, 1 / 3, 1.0])
    np.testing.assert_allclose(per_class["recall"], [2 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(per_class["f1"], [2 / 3, 2 / 5, 4 / 5])
    assert per_class["support"].tolist() == [3, 2, 3]


def test_misclassified_lists_most_confident_mistakes_first():
    evaluation = evaluate_predictions(make_predictions(ROWS), CLASSES)
    misclassified = evaluation.misclassified
    assert list(misclassified.columns) == ["path", "truth", "predicted", "confidence"]
    assert misclassified["path"].tolist() == ["e.wav", "c.wav", "h.wav"]
    assert misclassified["confidence"].tolist() == [0.95, 0.62, 0.45]
    assert misclassified.iloc[0][["truth", "predicted"]].tolist() == ["no", "yes"]


def test_failed_rows_are_counted_and_listed_but_not_scored():
    predictions = make_predictions(
        ROWS,
        failures=[("bad.wav", "yes", "cannot decode: not a RIFF file"), ("gone.wav", "no", "missing")],
    )
    evaluation = evaluate_predictions(predictions, CLASSES)
    assert (evaluation.n_scored, evaluation.n_failed) == (8, 2)
    assert evaluation.accuracy == pytest.approx(5 / 8)
    assert evaluation.failures.to_dict("records") == [
        {"path": "bad.wav", "error": "cannot decode: not a RIFF file"},
        {"path": "gone.wav", "error": "missing"},
    ]


def test_missing_error_values_mean_success():
    predictions = make_predictions(ROWS)
    predictions["error"] = np.nan  # as read back from a CSV with empty cells
    assert evaluate_predictions(predictions, CLASSES).n_failed == 0


def test_truth_outside_classes_gets_its_own_row_and_counts_as_wrong():
    rows = ROWS + [("i.wav", "up", "yes", 0.8), ("j.wav", "down", "no", 0.7)]
    evaluation = evaluate_predictions(make_predictions(rows), CLASSES)

    assert evaluation.labels == ("yes", "no", "stop", "down", "up")  # classes, then extras sorted
    assert evaluation.confusion.shape == (5, 5)
    assert evaluation.confusion[4].tolist() == [1, 0, 0, 0, 0]  # up -> yes
    assert evaluation.confusion[3].tolist() == [0, 1, 0, 0, 0]  # down -> no
    assert evaluation.accuracy == pytest.approx(5 / 10)
    # up and down have support and recall 0, so they pull balanced accuracy down.
    assert evaluation.balanced_accuracy == pytest.approx((2 / 3 + 1 / 2 + 2 / 3 + 0 + 0) / 5)
    assert evaluation.misclassified["path"].tolist()[:2] == ["e.wav", "i.wav"]


def test_zero_division_gives_zero_not_nan():
    # "stop" is never predicted and never true; "no" is predicted but never true.
    confusion = confusion_matrix(["yes", "yes"], ["yes", "no"], CLASSES)
    scores = per_class_scores(confusion, CLASSES).set_index("label")
    assert scores.loc["stop"].tolist() == [0.0, 0.0, 0.0, 0]
    assert scores.loc["no", "precision"] == 0.0
    assert scores.loc["no", "recall"] == 0.0
    # Balanced accuracy: only "yes" has support. Macro F1: "stop" is absent from both sides.
    assert balanced_accuracy(confusion) == pytest.approx(0.5)
    assert macro_f1(confusion) == pytest.approx((2 / 3 + 0.0) / 2)


def test_class_missing_from_corpus_does_not_lower_macro_f1():
    confusion = confusion_matrix(["yes", "no"], ["yes", "no"], CLASSES)
    assert macro_f1(confusion) == 1.0
    assert balanced_accuracy(confusion) == 1.0


def test_no_scored_files_gives_zero_scores_and_valid_json():
    predictions = make_predictions([], failures=[("bad.wav", "yes", "cannot decode")])
    evaluation = evaluate_predictions(predictions, CLASSES)
    assert (evaluation.n_scored, evaluation.n_failed) == (0, 1)
    assert evaluation.confusion.sum() == 0
    assert evaluation.accuracy == evaluation.balanced_accuracy == evaluation.macro_f1 == 0.0
    assert evaluation.ece == 0.0
    json.dumps(evaluation.to_dict(), allow_nan=False)


def test_to_dict_is_plain_rounded_json():
    predictions = make_predictions(ROWS, failures=[("bad.wav", "yes", "cannot decode")])
    data = evaluate_predictions(predictions, CLASSES).to_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["labels"] == CLASSES
    assert (data["n_scored"], data["n_failed"], data["n_misclassified"]) == (8, 1, 3)
    assert data["accuracy"] == 0.625
    assert data["balanced_accuracy"] == 0.611111
    assert data["macro_f1"] == 0.622222
    assert data["ece"] == 0.37375
    assert data["per_class"][1] == {
        "label": "no", "precision": 0.333333, "recall": 0.5, "f1": 0.4, "support": 2
    }
    assert data["confusion"] == [[2, 1, 0], [1, 1, 0], [0, 1, 2]]
    assert data["failures"] == [{"path": "bad.wav", "error": "cannot decode"}]
    assert type(data["per_class"][0]["support"]) is int
    assert all(type(n) is int for row in data["confusion"] for n in row)


def test_keyword_recall_and_background_tagged_as_keyword_count_by_hand():
    classes = ["_silence_", "_unknown_", "yes", "no"]
    rows = [
        ("k1.wav", "yes", "yes", 0.9),
        ("k2.wav", "yes", "no", 0.8),  # a keyword taken for another: missed
        ("k3.wav", "no", "_unknown_", 0.7),  # a keyword taken for unknown: missed, no false alarm
        ("k4.wav", "no", "no", 0.9),
        ("u1.wav", "_unknown_", "yes", 0.6),  # the false alarm
        ("u2.wav", "_unknown_", "_silence_", 0.5),  # wrong, but not a keyword
        ("u3.wav", "_unknown_", "_unknown_", 0.9),
        ("u4.wav", "_unknown_", "_unknown_", 0.9),
        ("s1.wav", "_silence_", "_silence_", 0.99),
    ]
    evaluation = evaluate_predictions(make_predictions(rows, classes), classes)
    assert evaluation.keyword_recall == pytest.approx(2 / 4)
    assert evaluation.tagged_as_keyword == {"_silence_": 0.0, "_unknown_": pytest.approx(1 / 4)}
    data = evaluation.to_dict()
    assert (data["keyword_recall"], data["tagged_as_keyword"]) == (0.5, {"_silence_": 0.0, "_unknown_": 0.25})


def test_background_classes_without_clips_have_no_false_alarm_share():
    classes = ["_unknown_", "yes", "no"]
    evaluation = evaluate_predictions(make_predictions([("a.wav", "yes", "yes", 0.9)], classes), classes)
    assert evaluation.tagged_as_keyword == {}
    assert evaluation.keyword_recall == 1.0


def test_evaluation_is_frozen_and_confusion_read_only():
    evaluation = evaluate_predictions(make_predictions(ROWS), CLASSES)
    with pytest.raises(AttributeError):
        evaluation.accuracy = 1.0
    with pytest.raises(ValueError):
        evaluation.confusion[0, 0] = 99


def test_invalid_confidence_names_the_file():
    predictions = make_predictions(ROWS)
    predictions.loc[3, "confidence"] = np.nan
    with pytest.raises(KwsError, match=r"^d\.wav: confidence nan is not a probability"):
        evaluate_predictions(predictions, CLASSES)
    predictions.loc[3, "confidence"] = 1.5
    with pytest.raises(KwsError, match=r"^d\.wav: confidence 1\.5"):
        evaluate_predictions(predictions, CLASSES)


def test_float32_overshoot_of_one_is_accepted():
    predictions = make_predictions(ROWS)
    predictions.loc[0, "confidence"] = 1.0000001
    assert evaluate_predictions(predictions, CLASSES).n_scored == 8


def test_contract_violations_raise_value_error():
    with pytest.raises(ValueError, match="confidence"):
        evaluate_predictions(make_predictions(ROWS).drop(columns="confidence"), CLASSES)
    with pytest.raises(ValueError, match="unique"):
        evaluate_predictions(make_predictions(ROWS), ["yes", "yes"])


def test_ece_uses_bins_not_one_global_average():
    # One bin would see accuracy 0.5 at mean confidence 0.5: a perfect-looking 0.0.
    assert expected_calibration_error([0.25, 0.75], [False, True]) == pytest.approx(0.25)


def test_ece_edges():
    assert expected_calibration_error([], []) == 0.0
    assert expected_calibration_error([1.0], [True]) == 0.0
    assert expected_calibration_error([0.0], [True]) == 1.0
    # Bins are (lo, hi]: 1/15 lands in the first bin with 0.0, so they average together.
    assert expected_calibration_error([0.0, 1 / 15], [False, False]) == pytest.approx(1 / 30)
    with pytest.raises(ValueError):
        expected_calibration_error([1.2], [True])


# --- properties against brute-force references -------------------------------------------

LABEL_POOL = ["yes", "no", "stop", "go", "up"]  # "go" and "up" play labels outside the classes


@st.composite
def labelled_files(draw):
    n = draw(st.integers(0, 40))
    truth = draw(st.lists(st.sampled_from(LABEL_POOL), min_size=n, max_size=n))
    predicted = draw(st.lists(st.sampled_from(CLASSES), min_size=n, max_size=n))
    confidence = draw(
        st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=n, max_size=n)
    )
    return truth, predicted, confidence


def brute_force_ece(confidence, correct, n_bins=15):
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for m in range(n_bins):
        in_bin = [
            i for i, c in enumerate(confidence)
            if (edges[m] < c <= edges[m + 1]) or (m == 0 and c == 0.0)
        ]
        if in_bin:
            acc = sum(correct[i] for i in in_bin) / len(in_bin)
            conf = sum(confidence[i] for i in in_bin) / len(in_bin)
            total += len(in_bin) / len(confidence) * abs(acc - conf)
    return total


@given(labelled_files())
def test_scores_match_counting(files):
    truth, predicted, confidence = files
    rows = [(f"{i}.wav", t, p, c) for i, (t, p, c) in enumerate(zip(truth, predicted, confidence))]
    evaluation = evaluate_predictions(make_predictions(rows), CLASSES)
    labels = evaluation.labels
    n = len(truth)

    assert labels[:3] == tuple(CLASSES)
    assert set(labels[3:]) == set(truth) - set(CLASSES)
    for i, t in enumerate(labels):
        for j, p in enumerate(labels):
            expected = sum(1 for a, b in zip(truth, predicted) if a == t and b == p)
            assert evaluation.confusion[i, j] == expected
    assert evaluation.confusion.sum() == n
    assert evaluation.n_scored == n

    n_right = sum(a == b for a, b in zip(truth, predicted))
    assert evaluation.accuracy == pytest.approx(n_right / n if n else 0.0)
    assert evaluation.accuracy == pytest.approx(np.trace(evaluation.confusion) / n if n else 0.0)
    assert len(evaluation.misclassified) == n - n_right

    recalls = []
    for row in evaluation.per_class.itertuples(index=False):
        support = truth.count(row.label)
        hits = sum(1 for a, b in zip(truth, predicted) if a == b == row.label)
        n_predicted = predicted.count(row.label)
        assert row.support == support
        assert row.recall == pytest.approx(hits / support if support else 0.0)
        assert row.precision == pytest.approx(hits / n_predicted if n_predicted else 0.0)
        if support:
            recalls.append(hits / support)
    assert evaluation.balanced_accuracy == pytest.approx(np.mean(recalls) if recalls else 0.0)
    for score in (evaluation.balanced_accuracy, evaluation.macro_f1, evaluation.ece):
        assert 0.0 <= score <= 1.0

    correct = [a == b for a, b in zip(truth, predicted)]
    assert evaluation.ece == pytest.approx(brute_force_ece(confidence, correct), abs=1e-12)
    json.dumps(evaluation.to_dict(), allow_nan=False)


@given(st.lists(st.tuples(st.sampled_from(CLASSES), st.sampled_from(CLASSES)), max_size=30))
def test_module_functions_agree_with_each_other(pairs):
    truth = [t for t, _ in pairs]
    predicted = [p for _, p in pairs]
    confusion = confusion_matrix(truth, predicted, CLASSES)
    scores = per_class_scores(confusion, CLASSES)
    assert scores["support"].sum() == len(pairs)
    seen = [c for c in CLASSES if c in truth or c in predicted]
    f1 = scores.set_index("label").loc[seen, "f1"]
    assert macro_f1(confusion) == pytest.approx(f1.mean() if seen else 0.0)
    assert accuracy(confusion) == pytest.approx(
        sum(t == p for t, p in pairs) / len(pairs) if pairs else 0.0
    )
