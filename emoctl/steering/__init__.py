"""Steering interventions written into a backbone's hookpoints.

``base`` holds the strength α (scalar or per batch row, times an optional
per-decode-step schedule), phase gating and :func:`steer`, which attaches any
number of interventions (several on one hookpoint are summed on the same
input) and detaches them on exit.  ``sae_features`` edits SAE latents;
``directions`` adds a dense direction: the closed form of SAE steering, the
global mean-difference baseline and the random-features baseline, all
norm-matched so one α means one step length.  ``vectors`` holds mean-difference directions at several
hookpoints (CoCoEmo's), their file, and :class:`MultiLayerSteering`, which adds them with one α.  ``schedules`` parses the schedules users write (a switch, a
ramp, segments with their own emotions; times in decode steps or seconds) into per-step multipliers.

Typical use::

    fs = FeatureSet.load("runs/select/features_Angry.json")
    sae = load_pretrained("runs/sae/sae")
    with steer(backbone, SAEFeatureSteering(sae, fs.feature_ids, alpha=-40.0)):
        generation = backbone.generate(prompts, seed=0)
"""
from __future__ import annotations

from emoctl.steering.base import Alpha, Intervention, Schedule, SteeringHandle, steer
from emoctl.steering.directions import (
    DirectionSteering, global_steering, mean_difference_directions, norm_matched, random_feature_steering,
    sae_direction, store_mean_differences,
)
from emoctl.steering.sae_features import SAEFeatureSteering
from emoctl.steering.schedules import parse_schedule
from emoctl.steering.vectors import MultiLayerSteering, SteeringVectors, mean_difference_vectors, vector_steering

__all__ = ["Alpha", "DirectionSteering", "Intervention", "MultiLayerSteering", "SteeringVectors", "SAEFeatureSteering", "Schedule", "SteeringHandle",
           "global_steering", "mean_difference_directions", "norm_matched", "parse_schedule",
           "random_feature_steering", "mean_difference_vectors", "sae_direction", "steer", "store_mean_differences", "vector_steering"]
