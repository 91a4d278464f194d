"""Run records from W&B: a W&B project (``fetch_records``) or offline run files (``offline_records``),
and whether W&B credentials are at hand without a prompt (``wandb_api_key_available``, also used by
npair.loggers).

Each record has the shape of a run's ``metrics.json`` as far as the table builder reads it::

    {"name": "<table>/<row>",  # the W&B group = cfg.name (experiment name)
     "seed": 0, "status": "completed" | "running" | "failed" | "interrupted" | "incomplete",
     "final": {"recall@1": 0.53, ...}, "config_hash": "...", "similarity": "cosine",
     "history": [{"step": 200, "recall@1": ...}, ...],  # offline, or fetch_records(with_history=True)
     "source": "wandb", "wandb": {"id", "path", "state", "group", "tags", "created_at"}, ...}

``select_record(records, name, seed)`` picks the run the table builder should use for one table cell.

Offline runs are read from their ``run-<id>.wandb`` transaction log. wandb 0.31 no longer ships a Python
reader for it (the old ``wandb.sdk.internal.datastore`` moved into the Go core), so ``read_wandb_file``
implements the documented container format — a LevelDB-style log: a 7-byte file header
(``":W&B"``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header
(CRC-32 of type byte + data, little-endian uint16 length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4) —
and decodes every record with wandb's own protobuf ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import netrc
import os
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from npair.errors import UserError

FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
FILE_IDENT, FILE_MAGIC = b":W&B", 0xBEE1
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4

# W&B run state -> metrics.json status, used when the summary has no status written by RunLogger.finish.
STATE_STATUS = {
    "finished": "completed",
    "running": "running",
    "pending": "running",
    "crashed": "failed",
    "failed": "failed",
    "killed": "interrupted",
    "preempting": "interrupted",
    "preempted": "interrupted",
}
FINAL_STATUSES = ("completed", "failed", "interrupted")


# ------------------------------------------------------------------------------------ credentials
def _netrc_has_host(host: str) -> bool:
    """A netrc entry for ``host`` in $NETRC or ~/.netrc (where ``wandb login`` writes it)."""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_api_key_available() -> bool:
    """True when W&B can authenticate without asking: WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE or a
    netrc entry for the W&B host (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    return _netrc_has_host(host)


# ------------------------------------------------------------------------------------ the .wandb file
def read_chunks(data: bytes, source: str = "<bytes>") -> Iterator[bytes]:
    """The logical records of a W&B transaction log (reassembled from FIRST/MIDDLE/LAST chunks).

    A truncated tail (a run killed mid-write) ends the iteration; a checksum mismatch raises naming the file.
    """
    if len(data) < FILE_HEADER.size:
        raise ValueError(f"{source}: {len(data)} bytes, too short to be a W&B run file")
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if ident != FILE_IDENT or magic != FILE_MAGIC:
        raise ValueError(f"{source}: not a W&B run file (header {data[:7]!r}); pass a run-<id>.wandb file")
    pos, pending = FILE_HEADER.size, None
    while pos < len(data):
        room = BLOCK_SIZE - pos % BLOCK_SIZE
        if room < CHUNK_HEADER.size:  # block trailer: zero padding
            pos += room
            continue
        if pos + CHUNK_HEADER.size > len(data):
            return
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        start, end = pos + CHUNK_HEADER.size, pos + CHUNK_HEADER.size + length
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += room
            continue
        if end > len(data):
            return
        chunk = data[start:end]
        if version == 0 and zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{source}: checksum mismatch at byte {pos}; the file is corrupt")
        pos = end
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = bytearray(chunk)
        elif kind == MIDDLE and pending is not None:
            pending += chunk
        elif kind == LAST and pending is not None:
            yield bytes(pending + chunk)
            pending = None
        else:
            raise ValueError(
                f"{source}: unexpected chunk type {kind} at byte {pos - length - CHUNK_HEADER.size}"
            )


def read_wandb_file(path: str | Path) -> list[Any]:
    """Every record of a ``run-<id>.wandb`` file as ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    records = []
    for raw in read_chunks(path.read_bytes(), str(path)):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def wait_for_exit_record(path: str | Path, timeout_s: float = 30.0, poll_s: float = 0.05) -> bool:
    """Wait until the run file at ``path`` holds its ``exit`` record; True once it does, False on timeout.

    ``wandb.finish()`` in offline mode returns before wandb's core process has written the run file (it
    can still be its 7-byte header), so a reader that opens it at once sees no history. RunLogger waits
    here before it reports the offline run as saved.
    """
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    deadline = time.monotonic() + timeout_s
    parsed_size = -1  # re-read the file only when it has grown
    while True:
        size = path.stat().st_size if path.is_file() else -1
        if size >= 0 and size != parsed_size:
            parsed_size = size
            try:
                for raw in read_chunks(path.read_bytes(), str(path)):
                    record = wandb_internal_pb2.Record()
                    record.ParseFromString(raw)
                    if record.WhichOneof("record_type") == "exit":
                        return True
            except ValueError:  # header not written yet, or a chunk mid-write
                pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def _item_key(item: Any) -> list[str]:
    return list(item.nested_key) if len(item.nested_key) else [item.key]


def _set_nested(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def _pop_nested(target: dict[str, Any], keys: list[str]) -> None:
    for key in keys[:-1]:
        target = target.get(key, {})
    target.pop(keys[-1], None)


@dataclass
class OfflineRun:
    """What one offline W&B run file holds: the run's identity, config, history rows and summary."""

    path: Path
    run_id: str = ""
    project: str = ""
    entity: str = ""
    group: str = ""
    display_name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    created_at: str | None = None

    @property
    def state(self) -> str:
        """The state W&B would show: finished (exit 0), failed (non-zero exit), crashed (no exit record)."""
        if self.exit_code is None:
            return "crashed"
        return "finished" if self.exit_code == 0 else "failed"


def read_offline_run(path: str | Path) -> OfflineRun:
    """Parse one offline run: a ``run-<id>.wandb`` file or its ``offline-run-*`` directory."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.wandb"))
        if len(files) != 1:
            raise ValueError(f"{path}: expected one run-<id>.wandb file, found {len(files)}")
        path = files[0]
    run = OfflineRun(path=path)
    for record in read_wandb_file(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.entity = r.run_id, r.project, r.entity
            run.group, run.display_name, run.tags = r.run_group, r.display_name, list(r.tags)
            if r.HasField("start_time"):
                run.created_at = r.start_time.ToDatetime(tzinfo=timezone.utc).isoformat()
            for item in r.config.update:
                _set_nested(run.config, _item_key(item), json.loads(item.value_json))
        elif kind == "config":
            for item in record.config.update:
                _set_nested(run.config, _item_key(item), json.loads(item.value_json))
            for item in record.config.remove:
                _pop_nested(run.config, _item_key(item))
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set_nested(row, _item_key(item), json.loads(item.value_json))
            if record.history.HasField("step"):
                row.setdefault("_step", record.history.step.num)
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _set_nested(run.summary, _item_key(item), json.loads(item.value_json))
            for item in record.summary.remove:
                _pop_nested(run.summary, _item_key(item))
        elif kind == "exit":
            run.exit_code = int(record.exit.exit_code)
    run.config.pop("_wandb", None)
    return run


def find_offline_runs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """All ``run-*.wandb`` files under the given files/directories (run dirs, wandb dirs, output roots)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file() and path.suffix == ".wandb":
            found.append(path)
        elif path.is_dir():
            found.extend(
                p for p in sorted(path.rglob("run-*.wandb")) if p.parent.name.startswith("offline-run-")
            )
        else:
            raise FileNotFoundError(f"{path}: no such W&B run file or directory")
    return sorted(set(found))


# ------------------------------------------------------------------------------------ records
def eval_history(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """metrics.json-style history from W&B history rows: ``{"step": s, <metric>: value}`` per evaluation."""
    history = []
    for row in rows:
        metrics = {k[len("eval/") :]: v for k, v in row.items() if k.startswith("eval/") and v is not None}
        if metrics:
            history.append({"step": int(row.get("_step", 0)), **metrics})
    return history


def record_from_run(
    group: str | None, config: dict[str, Any], summary: dict[str, Any], state: str | None, **wandb_info: Any
) -> dict[str, Any]:
    """One metrics.json-like record from the parts of a W&B run (public API or offline file)."""
    final = {
        k[len("final/") :]: float(v)
        for k, v in summary.items()
        if k.startswith("final/") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    status = summary.get("status")
    if status not in FINAL_STATUSES:
        status = STATE_STATUS.get(str(state), "incomplete")
        if status == "completed" and not final:
            status = "incomplete"
    seed = config.get("seed", summary.get("seed"))
    eval_cfg = config.get("eval") if isinstance(config.get("eval"), dict) else {}
    return {
        "name": group or config.get("name") or summary.get("name"),
        "seed": None if seed is None else int(seed),
        "status": status,
        "final": final,
        "config_hash": summary.get("config_hash"),
        "group_hash": summary.get("group_hash"),
        "similarity": summary.get("similarity") or eval_cfg.get("similarity"),
        "dataset": summary.get("dataset") or (config.get("dataset") or {}).get("name"),
        "loss": summary.get("loss") or (config.get("loss") or {}).get("name"),
        "steps_done": summary.get("steps_done"),
        "wall_time_s": summary.get("wall_time_s"),
        "source": "wandb",
        "wandb": {"state": state, "group": group, **wandb_info},
    }


def offline_records(paths: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
    """Records of every offline W&B run under ``paths`` (see :func:`find_offline_runs`), oldest first."""
    records = []
    for file in find_offline_runs(paths):
        run = read_offline_run(file)
        record = record_from_run(
            run.group,
            run.config,
            run.summary,
            run.state,
            id=run.run_id,
            path=str(run.path.parent),
            tags=run.tags,
            created_at=run.created_at,
            project=run.project,
        )
        record["history"] = eval_history(run.history)
        records.append(record)
    return sorted(records, key=lambda r: r["wandb"]["created_at"] or "")


def _as_dict(mapping: Any) -> dict[str, Any]:
    if mapping is None:
        return {}
    if isinstance(mapping, dict):
        return dict(mapping)
    raw = getattr(mapping, "_json_dict", None)  # wandb's HTTPSummary
    return dict(raw) if isinstance(raw, dict) else dict(mapping.items())


class MissingCredentials(UserError, RuntimeError):
    """Reading a W&B project needs an API key, and none is configured."""


def fetch_records(
    project: str,
    entity: str | None = None,
    api: Any = None,
    filters: dict[str, Any] | None = None,
    with_history: bool = False,
) -> list[dict[str, Any]]:
    """Records of the runs of a W&B project (``entity/project``), oldest first.

    ``api`` defaults to ``wandb.Api()`` (needs credentials; never prompts); anything with
    ``runs(path, filters=...)`` returning objects with ``.group .config .summary .state .id`` works.
    ``filters`` go to the server, e.g. ``{"group": "mini_table2/npair_mc"}``. ``with_history`` also reads
    the evaluation history (one extra request per run).
    """
    if api is None:
        import wandb

        if not wandb_api_key_available():  # wandb.Api() would prompt for a key on a terminal
            raise MissingCredentials(
                f"reading W&B project {project!r} needs credentials: set WANDB_API_KEY or run `wandb login` "
                "(or aggregate the local run directories instead)"
            )
        api = wandb.Api(timeout=60)
    path = f"{entity}/{project}" if entity else project
    from wandb.errors import Error as WandbError

    try:
        runs = list(api.runs(path, filters=filters or None))
    except WandbError as err:  # CommError (no such project, no network), AuthenticationError, UsageError
        raise UserError(f"reading W&B project {path!r} failed: {err}") from err
    records = []
    for run in runs:
        info = {
            "id": getattr(run, "id", None),
            "path": "/".join(getattr(run, "path", []) or []) or None,
            "url": getattr(run, "url", None),
            "tags": list(getattr(run, "tags", []) or []),
            "created_at": _utc(getattr(run, "created_at", None)),
            "project": project,
        }
        record = record_from_run(
            getattr(run, "group", None),
            _as_dict(run.config),
            _as_dict(run.summary),
            getattr(run, "state", None),
            **info,
        )
        if with_history:
            record["history"] = eval_history(run.scan_history())
        records.append(record)
    return sorted(records, key=lambda r: str(r["wandb"]["created_at"] or ""))


def select_record(
    records: Iterable[dict[str, Any]], name: str, seed: int, config_hash: str | Iterable[str] | None = None
) -> dict[str, Any] | None:
    """The record for one (experiment name, seed) cell: the latest completed run with that name and seed
    (and config hash, or one of several, when given); None when there is none. Records are assumed oldest
    first."""
    wanted = {config_hash} if isinstance(config_hash, str) else config_hash
    wanted = None if wanted is None else set(wanted)
    chosen = None
    for record in records:
        if (
            record.get("name") != name
            or record.get("seed") != int(seed)
            or record.get("status") != "completed"
        ):
            continue
        if wanted is not None and record.get("config_hash") not in wanted:
            continue
        chosen = record
    return chosen


def _utc(value: Any) -> str | None:
    """ISO timestamp string for a datetime or string (for sorting records from different sources)."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    return None if value is None else str(value)
