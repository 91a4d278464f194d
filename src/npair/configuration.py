"""Where the Hydra configs live (:data:`CONFIG_DIR`) and the config resolvers they use, registered in one
place.

Every entry point that composes or reads configs takes the location from here. The resolvers are
registered by :func:`register_resolvers`, which ``npair.train`` calls when it is imported (Hydra composes
the config before the task function runs, and launcher workers import that module to find the function)
and :func:`npair.build.compose_train` calls before composing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from npair.config_location import config_dir

# The checkout's configs/ directory, or the copy an installed wheel carries (npair.config_location).
CONFIG_DIR: Path = config_dir()


def env_rank() -> int:
    """The global rank announced by the launcher's environment (torchrun: RANK; SLURM via submitit:
    SLURM_PROCID), 0 when there is none. Usable before any process group exists (config resolvers)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return 0


def _if_rank_zero(on_rank_zero: Any, elsewhere: Any = None) -> Any:
    """Config resolver ``${if_rank_zero:A,B}``: A on global rank 0, B on the others (trainer/ddp.yaml)."""
    return on_rank_zero if env_rank() == 0 else elsewhere


# Config groups that are no training option: configs/table/ holds the table specs of python -m npair.tables.
NOT_TRAINING_GROUPS = ("table",)


def training_config_groups() -> str:
    """Resolver ``${training_config_groups:}`` (configs/hydra/help/npair.yaml): the config groups of
    ``python -m npair.train --help`` with their options, one ``group: a, b, c`` line each, as Hydra's
    ``$APP_CONFIG_GROUPS`` lists them but without :data:`NOT_TRAINING_GROUPS`."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    loader = GlobalHydra.instance().config_loader()

    def groups(parent: str) -> list[str]:
        found = []
        for child in loader.list_groups(parent):
            name = f"{parent}/{child}" if parent else child
            if name == "hydra" or name in NOT_TRAINING_GROUPS:
                continue
            if loader.get_group_options(name, ObjectType.CONFIG):
                found.append(name)
            found += groups(name)
        return found

    lines = [f"{name}: {', '.join(sorted(loader.get_group_options(name)))}" for name in sorted(groups(""))]
    return "\n".join(lines)


def register_resolvers() -> None:
    """Register the resolvers the configs use (a second call changes nothing):

    - ``${pid:}`` (train.yaml, trainer/ddp.yaml): this process's id, cached, so a sweep's jobs (joblib or
      submitit workers, other processes) resolve hydra.sweep.dir to the launching process's id, i.e. the
      directory the launcher created, and a requeued job finds its run directory again;
    - ``${if_rank_zero:A,B}`` (trainer/ddp.yaml): A on global rank 0, B on the other ranks;
    - ``${devnull:}`` (trainer/ddp.yaml): the null device, where ranks other than 0 write their log;
    - ``${training_config_groups:}`` (hydra/help/npair.yaml): the config groups listed by ``--help``.
    """
    resolvers = {
        "pid": (os.getpid, True),
        "if_rank_zero": (_if_rank_zero, False),
        "devnull": (lambda: os.devnull, False),
        "training_config_groups": (training_config_groups, False),
    }
    for name, (resolver, cached) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=cached)
