"""ImageNet weights through torchvision's weights API, with a clear error when they cannot be had.

torchvision downloads weights on first use into ``$TORCH_HOME/hub/checkpoints/`` (default
``~/.cache/torch/hub/checkpoints``). On an offline machine without that file the download
fails deep inside ``torch.hub``; :func:`load_pretrained` turns that into
:class:`PretrainedWeightsUnavailable`, which says how to pre-fetch the file or turn
pretraining off.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from npair.errors import UserError

M = TypeVar("M", bound=nn.Module)


class PretrainedWeightsUnavailable(UserError, RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


def checkpoint_path(weights: Any) -> Path:
    """Where torch.hub caches the file of a torchvision ``WeightsEnum`` member."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _advice(arch: str, weights: Any) -> str:
    path = checkpoint_path(weights)
    return (
        f"  * on a machine with network access run\n"
        f"      python -c \"import torchvision; torchvision.models.{arch}(weights='{weights.name}')\"\n"
        f"    and copy {path.name} to {path} here (TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}; "
        f"the file is {weights.url}), or\n"
        f"  * train from scratch with `backbone.net.pretrained=false`."
    )


def load_pretrained(builder: Callable[..., M], arch: str, weights: Any, **kwargs: Any) -> M:
    """``builder(weights=weights, **kwargs)``, raising :class:`PretrainedWeightsUnavailable` with
    instructions if the weights file is missing and cannot be downloaded, or is corrupt."""
    path = checkpoint_path(weights)
    try:
        return builder(weights=weights, **kwargs)
    except OSError as exc:  # URLError, HTTPError, socket errors, disk errors
        raise PretrainedWeightsUnavailable(
            f"cannot load ImageNet weights {arch}/{weights.name}: {path} is not cached and downloading "
            f"{weights.url} failed ({type(exc).__name__}: {exc}). To fix:\n{_advice(arch, weights)}"
        ) from exc
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # torch.load of a bad file
        if not path.is_file():
            raise
        raise PretrainedWeightsUnavailable(
            f"cannot load ImageNet weights {arch}/{weights.name} from {path} ({type(exc).__name__}: {exc}); "
            "the cached file looks corrupt or truncated: delete it and fetch it again:\n"
            f"{_advice(arch, weights)}"
        ) from exc
