"""A run's identity: the hash of its resolved config (npair.runio writes it into metrics.json)."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

# Keys that say where/how a run is logged, not what it computes: excluded from the config hash.
_HASH_EXCLUDED = ("paths", "logger", "tags")
_HASH_EXCLUDED_TRAINER = ("progress_bar", "num_workers", "eval_batch_size", "save_checkpoint", "log_every", "resume",
                          "checkpoint_every", "pin_memory", "threads")


def config_hash(cfg: DictConfig) -> str:
    """SHA-256 (first 16 hex digits) of the resolved config, less logging/location keys."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in _HASH_EXCLUDED:
        container.pop(key, None)
    for key in _HASH_EXCLUDED_TRAINER:
        container.get("trainer", {}).pop(key, None)
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]
