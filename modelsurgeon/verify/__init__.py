"""Behavioural checks of grown checkpoints against their sources."""
