"""Tests of ``emoctl.steering``."""
