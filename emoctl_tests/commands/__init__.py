"""Tests of ``emoctl.cli`` and ``emoctl.commands``: recipes, parsing, errors, DDP."""
