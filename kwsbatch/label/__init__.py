"""Labelling corpora: the scoring pipeline, output rows, the journaled cron-safe job, windows, shards, merge and Dask."""
