"""Tests of ``emoctl.emosteer``."""
