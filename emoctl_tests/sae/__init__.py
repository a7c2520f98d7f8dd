"""Tests of ``emoctl.sae``."""
