"""Tests of ``emoctl.metrics``."""
