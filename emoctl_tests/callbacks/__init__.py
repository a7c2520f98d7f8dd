"""Tests of ``emoctl.callbacks``."""
