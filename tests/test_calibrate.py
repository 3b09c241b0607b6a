"""Temperature scaling, the temperature a training run stores, and `label --threshold`."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import run_main

from kwsbatch.model.checkpoint import load_checkpoint
from kwsbatch.train.calibrate import MAX_TEMPERATURE, MIN_TEMPERATURE, calibration_error, fit_temperature


def overconfident_logits(true_temperature: float, n: int = 20000, classes: int = 6, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / true_temperature): T = true_temperature fits them."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 4
    targets = torch.multinomial(torch.softmax(logits / true_temperature, dim=1), 1, generator=g).squeeze(1)
    return logits, targets


@pytest.mark.parametrize("true_temperature", [0.7, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_that_made_the_labels(true_temperature):
    logits, targets = overconfident_logits(true_temperature)
    assert fit_temperature(logits, targets) == pytest.approx(true_temperature, rel=0.05)


def test_fitting_lowers_the_calibration_error_of_an_overconfident_model():
    logits, targets = overconfident_logits(2.5)
    temperature = fit_temperature(logits, targets)
    assert calibration_error(logits, targets, temperature) < 0.02 < calibration_error(logits, targets)


def test_temperature_stays_within_its_bounds():
    separable = torch.eye(4).repeat(10, 1) * 5
    targets = torch.arange(4).repeat(10)
    assert fit_temperature(separable, targets) == MIN_TEMPERATURE
    assert fit_temperature(separable, (targets + 1) % 4) == MAX_TEMPERATURE
    assert fit_temperature(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) == 1.0


def test_training_stores_the_fitted_temperature_in_best_pt(trained_model):
    checkpoint = load_checkpoint(trained_model)
    metrics = checkpoint.provenance["metrics"]
    assert MIN_TEMPERATURE <= checkpoint.temperature <= MAX_TEMPERATURE
    assert metrics["temperature"] == checkpoint.temperature
    assert 0.0 <= metrics["val_ece"] <= 1.0 and 0.0 <= metrics["val_ece_uncalibrated"] <= 1.0


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_label_threshold_writes_unknown_below_the_confidence(speech_corpus, trained_model, tmp_path):
    plain, gated, everything = tmp_path / "plain.csv", tmp_path / "gated.csv", tmp_path / "all.csv"
    run_main("label", speech_corpus / "test.csv", "--model", trained_model, "-o", plain, "-q", check=True)
    rows = read_rows(plain)
    confidences = sorted(float(r["confidence"]) for r in rows)
    # Halfway between the two middle confidences (which the CSV rounds to 6 decimals): about half fall below.
    middle = len(confidences) // 2
    threshold = (confidences[middle - 1] + confidences[middle]) / 2
    assert confidences[middle - 1] < threshold < confidences[middle]
    run_main("label", speech_corpus / "test.csv", "--model", trained_model, "-o", gated, "--threshold", str(threshold), "-q", check=True)
    for before, after in zip(rows, read_rows(gated)):
        expected = before["label"] if float(before["confidence"]) >= threshold else "_unknown_"
        assert after["label"] == expected
        assert after["confidence"] == before["confidence"] and after["p_yes"] == before["p_yes"]
    assert sum(r["label"] == "_unknown_" for r in read_rows(gated)) == sum(c < threshold for c in confidences) > 0
    run_main("label", speech_corpus / "test.csv", "--model", trained_model, "-o", everything, "--threshold", "1", "-q", check=True)
    assert {r["label"] for r in read_rows(everything)} <= {"_unknown_", *(r["label"] for r in rows if float(r["confidence"]) >= 1.0)}


def test_label_threshold_must_be_a_probability(speech_corpus, trained_model):
    result = run_main("label", speech_corpus / "test.csv", "--model", trained_model, "--threshold", "1.5")
    assert result.returncode == 2  # a bad flag value is a usage error
    assert result.stderr.strip().splitlines()[-1].endswith("error: argument --threshold: must be at most 1, got 1.5")
