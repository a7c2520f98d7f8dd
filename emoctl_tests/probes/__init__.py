"""Tests of ``emoctl.probes``."""
