"""kwsbatch: tag audio corpora with spoken keywords, in batch."""

__version__ = "0.1.0"
