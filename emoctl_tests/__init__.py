"""The emoctl test suite, grouped by the package each folder tests; shared helpers in ``helpers/``, the
reliability harness and the layering count in ``harness/``."""
