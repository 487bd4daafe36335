"""Frozen/trainable speech and text encoders, plus the on-disk feature cache."""
