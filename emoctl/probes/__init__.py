"""Acoustic probes of generated speech: F0, energy, brightness, duration, and paired before/after statistics."""
from emoctl.probes.acoustic import AcousticProfile, measure, to_rows
from emoctl.probes.paired import PairedComparison, compare_paired, compare_profiles
from emoctl.probes.pitch import PitchConfig, PitchTrack, track_f0

__all__ = ["AcousticProfile", "PairedComparison", "PitchConfig", "PitchTrack", "compare_paired", "compare_profiles",
           "measure", "to_rows", "track_f0"]
