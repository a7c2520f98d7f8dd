"""Tests of ``emoctl.harvest``."""
