"""Where the Hydra configs live: the checkout's ``configs/`` or the copy an installed wheel carries.

The repository keeps its configs at the top level (``configs/``, next to ``src/``). The wheel maps that
folder to the package data ``npair/configs`` (``[tool.setuptools.package-dir]`` in pyproject.toml), so
``python -m npair.train`` also works from an installed package, from any working directory. In a checkout
(``src/npair`` next to ``configs/train.yaml``, editable install or ``PYTHONPATH=src``) the checkout's
``configs/`` wins, so edits there take effect without reinstalling.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PRIMARY_CONFIG = "train.yaml"


def _checkout_configs() -> Path | None:
    """``<repo>/configs`` when this module is ``<repo>/src/npair/config_location.py``, else None."""
    package_dir = Path(__file__).resolve().parent
    if package_dir.parent.name != "src":
        return None
    candidate = package_dir.parents[1] / "configs"
    return candidate if (candidate / PRIMARY_CONFIG).is_file() else None


def config_dir() -> Path:
    """The directory holding ``train.yaml`` and the config groups (absolute path).

    A checkout's ``configs/`` first, then the installed package data ``npair/configs``. Raises
    ``FileNotFoundError`` naming both places when neither holds ``train.yaml``.
    """
    checkout = _checkout_configs()
    if checkout is not None:
        return checkout
    packaged = resources.files("npair") / "configs"
    path = Path(str(packaged))
    if (path / PRIMARY_CONFIG).is_file():
        return path.resolve()
    repo_guess = Path(__file__).resolve().parents[2] / "configs"
    raise FileNotFoundError(
        f"npair cannot find its Hydra configs: no {PRIMARY_CONFIG} in the checkout ({repo_guess}) nor in the "
        f"installed package ({path}). Reinstall the package (pip install npair, or pip install -e . in a "
        "checkout), or run from a checkout with PYTHONPATH=src."
    )


__all__ = ["config_dir"]
