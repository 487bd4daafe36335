"""Corpus readers: turn a corpus into manifest rows. Never imports the model."""
