"""Tests of ``emoctl.backbones``."""
