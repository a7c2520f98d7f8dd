"""Tests of ``emoctl.evaluation``."""
