"""Tests of ``emoctl.selection``."""
