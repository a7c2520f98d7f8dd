"""Tests of ``emoctl.corpus``."""
