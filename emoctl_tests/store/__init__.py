"""Tests of ``emoctl.store``."""
