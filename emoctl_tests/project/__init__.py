"""Tests of the project itself: the layer order and the docs."""
