"""Tests of ``emoctl.reports``."""
