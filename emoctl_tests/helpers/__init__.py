"""Helpers the tests share: the ``emoctl`` runners, a tiny random mini TTS, an ESD folder writer, probes and
workers run in other processes. Nothing here is a test."""
