"""Tests of the whole command under bad input and faults: the reliability catalogue, kills, silent results."""
