"""The reliability catalogue and its surfaces, the kill campaign and the layering count: programs the tests run
(each also runs alone with ``python -m emoctl_tests.harness.<name>``)."""
