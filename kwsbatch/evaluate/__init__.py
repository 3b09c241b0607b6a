"""Evaluation: predictions for a labelled manifest, the metrics, and the reports."""
