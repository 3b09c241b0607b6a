"""Corpora: synthetic speech, Speech Commands manifests and downloads, and the pre-training audit."""
