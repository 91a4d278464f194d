"""Run records from W&B: offline run files, a W&B API (faked from real offline runs), the file format."""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from wandb.proto import wandb_internal_pb2

from npair.wandb_source import (
    OfflineRun,
    fetch_records,
    find_offline_runs,
    offline_records,
    read_chunks,
    read_offline_run,
    read_wandb_file,
    record_from_run,
    select_record,
    wait_for_exit_record,
)


def metrics_of(tiny: dict[str, Any], seed: int) -> dict[str, Any]:
    return json.loads((tiny["runs"][f"npair_mc/seed{seed}"] / "metrics.json").read_text())


# ------------------------------------------------------------------------ a W&B API, faked from real runs
class FakeSummary:
    """Like wandb's HTTPSummary: a mapping whose data sits in ``_json_dict``."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._json_dict = dict(data)

    def items(self):
        return self._json_dict.items()


class FakeRun:
    """The attributes of ``wandb.apis.public.Run`` that fetch_records reads, from an offline run."""

    def __init__(self, offline: OfflineRun, entity: str, state: str | None = None) -> None:
        self.id, self.group, self.tags = offline.run_id, offline.group, offline.tags
        self.config = dict(offline.config)  # the public API returns plain values, `_wandb` removed
        self.summary = FakeSummary(offline.summary)
        self.state = state or offline.state
        self.path = [entity, offline.project, offline.run_id]
        self.url = f"https://wandb.ai/{entity}/{offline.project}/runs/{offline.run_id}"
        self.created_at = offline.created_at
        self._history = offline.history

    def scan_history(self):
        return iter(self._history)


class FakeApi:
    def __init__(self, runs: list[FakeRun]) -> None:
        self._runs, self.calls = runs, []

    def runs(self, path: str, filters: dict[str, Any] | None = None, **_: Any) -> list[FakeRun]:
        self.calls.append((path, filters))
        return [r for r in self._runs if not filters or r.group == filters.get("group")]


def fake_api(tiny: dict[str, Any], entity: str = "me") -> FakeApi:
    return FakeApi([FakeRun(read_offline_run(f), entity) for f in find_offline_runs(tiny["wandb_dir"])])


def test_offline_records_match_metrics_json(tiny: dict[str, Any]) -> None:
    records = offline_records(tiny["wandb_dir"])
    assert [(r["name"], r["seed"], r["status"]) for r in records] == [
        ("tiny/npair_mc", 0, "completed"),
        ("tiny/npair_mc", 1, "completed"),
    ]
    for record in records:
        local = metrics_of(tiny, record["seed"])
        assert record["final"] == pytest.approx(local["final"])
        assert record["config_hash"] == local["config_hash"] and record["similarity"] == local["similarity"]
        assert record["history"] == local["history"]  # JSON round trips of the same floats: exact
        assert record["wandb"]["id"] == local["wandb"]["id"]
    # the run directory's own wandb/ is found too when WANDB_DIR is unset: here the outputs tree has none
    assert offline_records(tiny["outputs"]) == []


def test_fetch_records_from_the_api(tiny: dict[str, Any]) -> None:
    api = fake_api(tiny)
    records = fetch_records("npair", entity="me", api=api)
    assert api.calls == [("me/npair", None)]
    offline = offline_records(tiny["wandb_dir"])
    assert len(records) == 2
    for record, expected in zip(records, offline):
        local = metrics_of(tiny, record["seed"])
        for key in ("name", "seed", "status", "config_hash", "similarity", "dataset", "loss"):
            assert record[key] == expected[key], key
        assert record["final"] == pytest.approx(local["final"])
        assert record["wandb"]["path"] == f"me/npair/{local['wandb']['id']}"
        assert "history" not in record
    with_history = fetch_records("npair", api=api, filters={"group": "tiny/npair_mc"}, with_history=True)
    assert api.calls[-1] == ("npair", {"group": "tiny/npair_mc"})
    assert [r["history"] for r in with_history] == [metrics_of(tiny, s)["history"] for s in (0, 1)]
    chosen = select_record(records, "tiny/npair_mc", 1)
    assert chosen is not None and chosen["final"] == pytest.approx(metrics_of(tiny, 1)["final"])
    assert select_record(records, "tiny/npair_mc", 2) is None
    assert select_record(records, "tiny/triplet", 0) is None  # logged with logger=none


def test_status_follows_summary_then_run_state() -> None:
    config = {"name": "t/r", "seed": 1, "eval": {"similarity": "euclidean"}}
    done = record_from_run("t/r", config, {"status": "completed", "final/recall@1": 0.5}, "crashed")
    assert done["status"] == "completed" and done["final"] == {"recall@1": 0.5}  # finals were written
    assert done["similarity"] == "euclidean" and done["seed"] == 1
    assert record_from_run("t/r", config, {"status": "running"}, "crashed")["status"] == "failed"
    assert record_from_run("t/r", config, {"status": "running"}, "running")["status"] == "running"
    assert record_from_run("t/r", config, {"status": "running"}, "killed")["status"] == "interrupted"
    assert record_from_run("t/r", config, {"final/nmi": 0.4}, "finished")["status"] == "completed"
    assert record_from_run("t/r", config, {}, "finished")["status"] == "incomplete"
    assert record_from_run(None, config, {}, "finished")["name"] == "t/r"  # no group: the config's name


def test_select_record_takes_the_latest_completed_run() -> None:
    def rec(seed: int, status: str, value: float, config_hash: str = "h1") -> dict[str, Any]:
        return {
            "name": "t/r",
            "seed": seed,
            "status": status,
            "final": {"m": value},
            "config_hash": config_hash,
        }

    records = [
        rec(0, "completed", 0.1),
        rec(0, "completed", 0.2, "h2"),
        rec(0, "failed", 0.9),
        rec(1, "running", 1),
    ]
    assert select_record(records, "t/r", 0)["final"] == {"m": 0.2}
    assert select_record(records, "t/r", 0, config_hash="h1")["final"] == {"m": 0.1}
    assert select_record(records, "t/r", 0, config_hash={"h1", "h3"})["final"] == {"m": 0.1}  # one of several
    assert select_record(records, "t/r", 0, config_hash={"h3"}) is None
    assert select_record(records, "t/r", 1) is None


# ----------------------------------------------------------------------------- the .wandb container format
def write_log(payloads: list[bytes], block: int = 32768) -> bytes:
    """A LevelDB-style W&B log written independently of the reader: records split at block boundaries."""
    out = bytearray(struct.pack("<4sHB", b":W&B", 0xBEE1, 0))
    for data in payloads:
        first = True
        while True:
            room = block - len(out) % block
            if room < 7:
                out += b"\0" * room
                continue
            piece, data = data[: room - 7], data[room - 7 :]
            kind = (1 if not data else 2) if first else (4 if not data else 3)
            out += struct.pack("<IHB", zlib.crc32(piece, zlib.crc32(bytes([kind]))), len(piece), kind) + piece
            first = False
            if not data:
                break
    return bytes(out)


def test_reader_reassembles_records_split_across_blocks() -> None:
    # 1st record leaves 3 bytes in block 0 (zero trailer); the 2nd spans three blocks; then small ones.
    payloads = [b"a" * (32768 - 7 - 7 - 3), bytes(range(256)) * 300, b"", b"tail"]
    data = write_log(payloads)
    assert list(read_chunks(data)) == payloads
    assert list(read_chunks(data[:-2])) == payloads[:3]  # a run killed mid-write: the complete records
    broken = bytearray(data)
    broken[40000] ^= 0xFF
    with pytest.raises(ValueError, match="checksum mismatch"):
        list(read_chunks(bytes(broken), "x.wandb"))
    with pytest.raises(ValueError, match="not a W&B run file"):
        list(read_chunks(b"PK\x03\x04" + b"\0" * 20, "x.zip"))


def test_read_offline_run_from_protobuf_records(tmp_path: Path) -> None:
    run = wandb_internal_pb2.Record()
    run.run.run_id, run.run.run_group, run.run.project = "abc", "t/r", "p"
    run.run.tags.extend(["seed2"])
    run.run.config.update.add(key="seed", value_json="2")
    run.run.config.update.add(key="eval", value_json=json.dumps({"similarity": "cosine"}))
    history = wandb_internal_pb2.Record()
    history.history.step.num = 5
    history.history.item.add(key="eval/recall@1", value_json="0.25")
    summary = wandb_internal_pb2.Record()
    summary.summary.update.add(key="final/recall@1", value_json="0.25")
    summary.summary.update.add(nested_key=["_wandb", "runtime"], value_json="3")
    summary.summary.update.add(key="status", value_json='"completed"')
    exit_record = wandb_internal_pb2.Record()
    exit_record.exit.exit_code = 0
    folder = tmp_path / "wandb" / "offline-run-20260101_000000-abc"
    folder.mkdir(parents=True)
    payloads = [r.SerializeToString() for r in (run, history, summary, exit_record)]
    (folder / "run-abc.wandb").write_bytes(write_log(payloads))
    assert len(read_wandb_file(folder / "run-abc.wandb")) == 4
    parsed = read_offline_run(folder)
    assert parsed.summary == {"final/recall@1": 0.25, "_wandb": {"runtime": 3}, "status": "completed"}
    assert parsed.history == [{"eval/recall@1": 0.25, "_step": 5}] and parsed.state == "finished"
    (record,) = offline_records(tmp_path)
    assert (record["name"], record["seed"], record["status"], record["final"]) == (
        "t/r",
        2,
        "completed",
        {"recall@1": 0.25},
    )
    assert record["history"] == [{"step": 5, "recall@1": 0.25}]
    (folder / "run-abc.wandb").write_bytes(write_log(payloads[:3]))  # no exit record: the process died
    assert read_offline_run(folder).state == "crashed"


def test_fetch_records_without_credentials_fails_instead_of_prompting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    with pytest.raises(RuntimeError, match="needs credentials: set WANDB_API_KEY or run `wandb login`"):
        fetch_records("npair")


def test_wait_for_exit_record_waits_for_wandb_to_write_the_file(tmp_path: Path) -> None:
    # wandb.finish() in offline mode can return while the run file is still its 7-byte header
    run, exit_record = wandb_internal_pb2.Record(), wandb_internal_pb2.Record()
    run.run.run_id = "abc"
    exit_record.exit.exit_code = 0
    path = tmp_path / "run-abc.wandb"
    path.write_bytes(write_log([]))
    full = write_log([run.SerializeToString(), exit_record.SerializeToString()])
    writer = threading.Timer(0.3, lambda: path.write_bytes(full))
    start = time.monotonic()
    writer.start()
    assert wait_for_exit_record(path, timeout_s=10.0)
    assert time.monotonic() - start >= 0.3
    writer.join()
    path.write_bytes(write_log([run.SerializeToString()]))  # never finished: give up after the timeout
    assert not wait_for_exit_record(path, timeout_s=0.2)
    assert not wait_for_exit_record(tmp_path / "missing.wandb", timeout_s=0.1)


def test_a_project_wandb_cannot_read_is_named_in_a_users_error() -> None:
    from wandb.errors import CommError

    from npair.errors import UserError, is_user_error

    class Unreachable:
        def runs(self, path: str, filters: dict[str, Any] | None = None) -> list[Any]:
            raise CommError("Could not find project npair-nope")

    message = "reading W&B project 'team/npair-nope' failed: Could not find"
    with pytest.raises(UserError, match=message) as caught:
        fetch_records("npair-nope", entity="team", api=Unreachable())
    assert is_user_error(caught.value)
