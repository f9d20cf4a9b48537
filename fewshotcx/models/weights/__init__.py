"""Checkpoints: the registry of known weights and fetching them (:mod:`~fewshotcx.models.weights.registry`),
and safe loading, key checks and saving (:mod:`~fewshotcx.models.weights.checkpoints`).

Weights are named by a *spec*: a file path, ``"default"`` (the checkpoint bundled with fewshotcx),
``"official"`` (the backend's published checkpoint) or a registry name (e.g. ``"sam-vit_l"``).
Checkpoints are always read with ``torch.load(..., weights_only=True)``.
"""

from .checkpoints import check_keys, describe, load_checkpoint, load_state_dict, load_universeg, save_checkpoint
from .registry import (BUNDLED_DIR, DEFAULT, OFFICIAL, REGISTRY, Checkpoint, WeightsError, cache_dir, expected_path,
                       resolve, sha256_file)

__all__ = ["BUNDLED_DIR", "DEFAULT", "OFFICIAL", "REGISTRY", "Checkpoint", "WeightsError", "cache_dir", "check_keys",
           "describe", "expected_path", "load_checkpoint", "load_state_dict", "load_universeg", "resolve",
           "save_checkpoint", "sha256_file"]
