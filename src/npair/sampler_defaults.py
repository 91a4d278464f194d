"""A loss's default sampler, chosen by the batch layout its class declares.

``configs/train.yaml`` selects ``sampler: ${loss}``: the sampler option named like the loss. A loss names its
own sampler with a ``sampler/<loss>.yaml`` in the config search path (``triplet`` and ``tuplet`` have one);
for every other loss config, :func:`register_default_samplers` puts a ``sampler/<loss>`` entry into Hydra's
ConfigStore that is the default sampler of the loss class's ``layout`` (:data:`SAMPLER_OF_LAYOUT`), so a new
loss in a user's own ``hydra.searchpath`` trains without naming a sampler. ``sampler=...`` on the command line
or in an experiment config still chooses any other.

The two places that compose training configs call it first: ``npair.train`` (before Hydra parses the command
line) and :func:`npair.build.compose_train`. It reads the loss configs' files directly (the package's
configs, then each ``hydra.searchpath`` entry and ``--config-dir``, Hydra's order) rather than composing each
loss, which would cost a full composition per loss at every start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from npair.configuration import CONFIG_DIR

log = logging.getLogger(__name__)

# Layout (npair.losses, npair.samplers) -> the sampler config that makes it (docs/design.md §3).
SAMPLER_OF_LAYOUT: dict[str, str] = {
    "class_blocks": "npair",  # N classes × M images, class-major (npair.samplers.NPairSampler)
    "triplets": "triplet",  # [a, p, n, ...] (npair.samplers.TripletSampler)
    "tuplets": "tuplet",  # N rows of N + 1 images (npair.samplers.TupletSampler)
    "pairs": "pair",  # [x1, x1', x2, x2', ...] (npair.samplers.PairSampler)
    "any": "npair",  # a loss that reads any batch (the softmax classifier): N-pair batches, as in the paper
}
PROVIDER = "npair.sampler_defaults"
MAX_INHERITANCE = 8  # loss configs followed through their defaults lists to find a _target_
_done: dict[tuple[Path, ...], dict[str, str]] = {}  # search path -> what was registered for it


def search_dirs(args: Sequence[str]) -> list[Path]:
    """The config directories Hydra searches for these command-line arguments or overrides, in its order: the
    package's configs, then the ``hydra.searchpath=[...]`` entries and ``--config-dir DIR`` / ``-cd DIR``
    (``file://`` paths, and ``pkg://`` packages that can be found)."""
    args, entries = list(args), []
    for i, arg in enumerate(args):
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "hydra.searchpath" and value:
            parsed = OverridesParser.create().parse_overrides([f"hydra.searchpath={value}"])[0].value()
            entries += [str(v) for v in (parsed if isinstance(parsed, list) else [parsed])]
        elif arg in ("--config-dir", "-cd") and i + 1 < len(args):
            entries.append(args[i + 1])
        elif arg.startswith("--config-dir="):
            entries.append(arg.partition("=")[2])
    dirs = [CONFIG_DIR]
    for entry in entries:
        scheme, sep, where = entry.partition("://")
        if sep and scheme == "pkg":
            try:
                dirs.append(Path(str(resources.files(where.replace("/", ".")))))
            except ModuleNotFoundError:
                continue  # Hydra itself reports a search path it cannot use
        else:
            dirs.append(Path(where if sep else entry))
    return dirs


def group_options(dirs: Sequence[Path], group: str) -> list[str]:
    """The options of a config group across ``dirs`` (``<dir>/<group>/<option>.yaml``), sorted."""
    return sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})


def config_file(dirs: Sequence[Path], group: str, option: str) -> Path | None:
    """The file Hydra takes for ``group=option``: the first directory that has it."""
    return next((path for d in dirs if (path := d / group / f"{option}.yaml").is_file()), None)


def register_default_samplers(args: Sequence[str] = ()) -> dict[str, str]:
    """Give each loss config without a ``sampler/<loss>.yaml`` the default sampler of its layout.

    ``args`` are the training command line or overrides (only those changing the search path matter).
    Returns ``{loss option: sampler option}`` for the entries registered. A loss whose class cannot be
    imported, or whose layout has no default sampler, gets none, with a warning saying what to do.
    """
    dirs = search_dirs(args)
    key = tuple(dirs)
    if key not in _done:
        own = set(group_options(dirs, "sampler"))
        chosen = {}
        for loss in group_options(dirs, "loss"):
            if loss not in own and (sampler := default_sampler(loss, dirs)) is not None:
                node = {"defaults": [sampler, "_self_"]}
                ConfigStore.instance().store(group="sampler", name=loss, node=node, provider=PROVIDER)
                chosen[loss] = sampler
        _done[key] = chosen
    return _done[key]


def default_sampler(loss: str, dirs: Sequence[Path]) -> str | None:
    """The default sampler option of loss option ``loss``: the ``layout`` of its ``_target_`` class."""
    advice = f"name a sampler for loss={loss} with sampler=..., or add a sampler/{loss}.yaml"
    target = loss_target(loss, dirs)
    if target is None:
        log.warning("loss/%s.yaml: no _target_ found (also through its defaults list); %s", loss, advice)
        return None
    try:
        layout = getattr(get_class(target), "layout", "any")
    except Exception as err:  # noqa: BLE001 - an unimportable loss must not stop the runs of other losses
        log.warning(
            "loss/%s.yaml: cannot import %s (%s), so its batch layout is unknown; %s",
            loss,
            target,
            err,
            advice,
        )
        return None
    if layout not in SAMPLER_OF_LAYOUT:
        log.warning(
            "loss/%s.yaml: %s reads %r batches, a layout without a default sampler (known: %s); %s",
            loss,
            target,
            layout,
            ", ".join(SAMPLER_OF_LAYOUT),
            advice,
        )
        return None
    return SAMPLER_OF_LAYOUT[layout]


def loss_target(loss: str, dirs: Sequence[Path]) -> str | None:
    """The ``_target_`` of a loss config, following the loss options its defaults list extends (the last one
    wins, as when Hydra merges them before ``_self_``); None when there is none."""
    for _ in range(MAX_INHERITANCE):
        path = config_file(dirs, "loss", loss)
        if path is None:
            return None
        cfg = OmegaConf.load(path)
        if not isinstance(cfg, DictConfig):
            return None
        if "_target_" in cfg:
            return str(cfg._target_)
        defaults = cfg.get("defaults")
        listed = list(defaults) if isinstance(defaults, ListConfig) else []
        parents = [d for d in listed if isinstance(d, str) and d != "_self_"]
        if not parents:
            return None
        loss = parents[-1].removeprefix("/loss/")
    return None
