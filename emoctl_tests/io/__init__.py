"""Tests of ``emoctl.io``."""
