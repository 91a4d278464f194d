"""The table builder on synthetic metrics.json files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from npair import identity, tables
from npair.configuration import CONFIG_DIR
from npair.runio import atomic_write_json, atomic_write_text
from npair.tables import (
    Cell,
    Row,
    TableSpec,
    bold_mask,
    check_runs,
    collect,
    composer,
    dry_run,
    dry_run_summary,
    load_spec,
    missing_runs,
    plural,
    run_dir_of,
    table_names,
    to_markdown,
    write_table,
)


def make_spec() -> TableSpec:
    return TableSpec(
        name="demo",
        title="Demo",
        seeds=[0, 1, 2],
        metrics=[{"key": "recall@1", "label": "R@1"}, {"key": "nmi", "label": "NMI"}],
        rows=[
            Row("triplet", "demo/triplet", paper={"recall@1": 43.30}),
            Row("60-pair-mc", "demo/npair_mc", paper={"recall@1": 50.96}),
            Row("absent", "demo/absent"),
        ],
        paper_source="Table 2c",
    )


def run_config(experiment: str, seed: int) -> dict:
    """A stand-in for the config a run of ``experiment`` was trained with."""
    return {"name": experiment, "seed": seed, "loss": {"name": experiment.split("/")[-1]}}


def write_run(
    root: Path, spec: TableSpec, row: Row, seed: int, final: dict, status: str = "completed"
) -> None:
    """A run directory as npair.train leaves it: config.yaml and a metrics.json whose header hashes it."""
    run_dir, config = spec.run_dir(root, row, seed), run_config(row.experiment, seed)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    atomic_write_json(run_dir / "metrics.json", {"status": status, **identity.hashes(config), "final": final})


def test_bold_rule_best_and_overlapping_standard_errors() -> None:
    cells = [Cell(50.0, 1.0, 3, 3), Cell(48.5, 0.6, 3, 3), Cell(47.0, 0.5, 3, 3), Cell(None, None, 0, 3)]
    # best 50±1 spans [49, 51]; 48.5±0.6 reaches 49.1 (overlaps); 47±0.5 reaches 47.5 (does not).
    assert bold_mask(cells) == [True, True, False, False]
    assert bold_mask(cells, higher_is_better=False) == [False, False, True, False]


def test_collect_aggregates_completed_runs_and_reports_missing(tmp_path: Path) -> None:
    spec = make_spec()
    triplet, npair, absent = spec.rows
    for seed, r1 in enumerate([0.40, 0.42, 0.44]):
        write_run(tmp_path, spec, triplet, seed, {"recall@1": r1, "nmi": 0.5})
    write_run(tmp_path, spec, npair, 0, {"recall@1": 0.55, "nmi": 0.6})
    write_run(tmp_path, spec, npair, 1, {"recall@1": 0.57, "nmi": 0.62})
    write_run(tmp_path, spec, npair, 2, {"recall@1": 0.99, "nmi": 0.99}, status="running")  # not counted
    table = collect(spec, tmp_path)
    t = table["triplet"]["recall@1"]
    assert (t.mean, t.n, t.expected) == (pytest.approx(42.0), 3, 3)
    assert t.se == pytest.approx(2.0 / math.sqrt(3))
    assert t.diff == pytest.approx(42.0 - 43.30)
    n = table["60-pair-mc"]["recall@1"]
    assert (n.mean, n.n) == (pytest.approx(56.0), 2)
    a = table["absent"]["recall@1"]
    assert a.missing and a.mean is None  # missing, never zero
    md = to_markdown(spec, table)
    assert "missing (0/3)" in md
    assert "56.00 ± 1.00 (2/3 seeds)" in md
    assert "**56.00 ± 1.00 (2/3 seeds)**" in md  # the best R@1 is bold
    assert "| ↳ ours − paper | -1.30 |" in md
    assert "0.00" not in md.split("| absent |")[1].splitlines()[0]


def test_write_table_writes_md_csv_tex(tmp_path: Path) -> None:
    spec = make_spec()
    write_run(tmp_path, spec, spec.rows[0], 0, {"recall@1": 0.4, "nmi": 0.5})
    paths = write_table(spec, tmp_path)
    assert {p.suffix for p in paths.values()} == {".md", ".csv", ".tex", ".png"}
    assert (tmp_path / "figures" / "demo_recall.png").exists()
    csv_text = paths["csv"].read_text()
    assert "demo,triplet,recall@1,40.0" in csv_text
    assert "demo,absent,recall@1,,,0,3,,,0" in csv_text
    header, first, second = (line.split(",") for line in csv_text.splitlines()[:3])
    assert header[-7:] == [
        "completed_runs",
        "metric_label",
        "group_hash",
        "config_hashes",
        "se_over",
        "value_is_se_over",
        "within_run_spread",
    ]
    assert first[header.index("metric_label")] == "R@1"  # the figures' labels
    assert second[:3] == ["demo", "triplet", "nmi"] and second[header.index("metric_label")] == "NMI"
    assert first[header.index("within_run_spread")] == ""  # Recall@1 is one measurement per run
    assert second[header.index("within_run_spread")] == "nmi_se_kmeans_seeds"
    se_over = {line.split(",")[header.index("se_over")] for line in csv_text.splitlines()[1:]}
    assert se_over == {"training_seeds"}
    assert r"\textbf{40.00}" in paths["tex"].read_text()


def test_the_footers_name_each_kind_of_spread(tmp_path: Path) -> None:
    spec = TableSpec(
        name="faces",
        title="Faces",
        seeds=[0, 1, 2],
        rows=[
            Row(
                "60-pair-mc",
                "demo/npair_mc",
                paper={"lfw_acc": 98.0, "lfw_acc_se_folds": 0.2},
                paper_se={"lfw_acc": 0.2},
            ),
        ],
        metrics=[
            {"key": "lfw_acc", "label": "VRF"},
            {"key": "lfw_acc_se_folds", "label": "VRF s.e."},
            {"key": "nmi", "label": "NMI"},
            {"key": "f1", "label": "F1"},
            {"key": "vrf_neg9", "label": "VRF (neg=9)"},
            {"key": "recall@1", "label": "R@1"},
        ],
    )
    for seed in spec.seeds:
        write_run(
            tmp_path,
            spec,
            spec.rows[0],
            seed,
            {
                "lfw_acc": 0.98,
                "lfw_acc_se_folds": 0.002,
                "nmi": 0.5,
                "f1": 0.2,
                "vrf_neg9": 0.9,
                "recall@1": 0.4,
            },
        )
    paths = write_table(spec, tmp_path)
    md, tex = paths["md"].read_text(), paths["tex"].read_text()
    for text in (md, tex):
        assert "Mean ± standard error over training seeds (one run per seed), seeds [0, 1, 2]" in text
        assert (
            "NMI, F1: each run's value is the mean over k-means seeds (eval.kmeans_seeds); that spread "
            "(`nmi_se_kmeans_seeds`, `f1_se_kmeans_seeds` in metrics.json"
        ) in text
        assert (
            "`vrf_neg9_se_negative_draws` in metrics.json, standard error over draws of the negatives" in text
        )
        assert "VRF: each run's value is the mean over the 10 LFW folds" in text
        assert "VRF s.e.: each run's standard error over the 10 LFW folds, one embedding" in text
        assert "↳ paper ±: the paper's own ±" in text
        assert "R@1:" not in text and "recall@1_se" not in text  # one measurement per run: nothing to say
    assert all(line.startswith("%") for line in tex.split(r"\end{tabular}")[1].strip().splitlines())


def test_a_one_seed_table_says_it_has_no_spread_across_seeds(tmp_path: Path) -> None:
    spec = make_spec()
    spec.seeds = [0]
    write_run(tmp_path, spec, spec.rows[0], 0, {"recall@1": 0.4, "nmi": 0.5})
    md = write_table(spec, tmp_path)["md"].read_text()
    assert "One run per row (seed 0): no ± across training seeds" in md and "over training seeds" not in md
    assert "paper ±" not in md  # the demo rows print no paper ±


def test_tables_share_runs_and_re_evaluations_read_their_own_file(tmp_path: Path) -> None:
    a, b = make_spec(), make_spec()
    b.name = "other"
    assert (
        a.run_dir(tmp_path, a.rows[0], 1)
        == b.run_dir(tmp_path, b.rows[0], 1)
        == tmp_path / "runs/demo/triplet/seed1"
    )
    faces = Row("triplet", "demo/triplet", evaluate_with=["dataset=glyphs_faces", "eval=faces"])
    assert (
        a.result_path(tmp_path, faces, 1)
        == tmp_path / "runs/demo/triplet/seed1/eval/dataset=glyphs_faces_eval=faces.json"
    )
    spec = TableSpec(name="f", title="F", seeds=[1], metrics=[{"key": "rank1"}], rows=[faces])
    write_run(tmp_path, spec, faces, 1, {"recall@1": 0.5})  # the training run's own metrics.json
    assert collect(spec, tmp_path)["triplet"]["rank1"].missing
    atomic_write_json(spec.result_path(tmp_path, faces, 1), {"status": "completed", "final": {"rank1": 0.25}})
    assert collect(spec, tmp_path)["triplet"]["rank1"].mean == pytest.approx(25.0)


def test_missing_runs_are_counted_once_across_tables(tmp_path: Path) -> None:
    a, b = make_spec(), make_spec()
    write_run(tmp_path, a, a.rows[0], 0, {"recall@1": 0.4})
    missing = missing_runs(check_runs([a, b], tmp_path, run_config))
    assert missing == {"demo/triplet": [1, 2], "demo/npair_mc": [0, 1, 2], "demo/absent": [0, 1, 2]}


def test_every_table_spec_loads() -> None:
    root = CONFIG_DIR / "table"
    names = sorted(p.stem for p in root.glob("*.yaml"))
    assert "mini" in names
    for name in names:
        for table in table_names(name):
            spec = load_spec(table)
            assert spec.rows and spec.seeds and spec.metrics


def test_unknown_table_lists_the_known_ones() -> None:
    with pytest.raises(SystemExit, match="TABLE='nope'.*Known tables: .*mini"):
        table_names("nope")


def test_bold_can_be_turned_off_per_metric_and_paper_se_is_shown(tmp_path: Path) -> None:
    spec = make_spec()
    spec.metrics[1]["bold"] = False
    spec.rows[0].paper_se = {"recall@1": 0.38}
    write_run(tmp_path, spec, spec.rows[0], 0, {"recall@1": 0.4, "nmi": 0.5})
    md = to_markdown(spec, collect(spec, tmp_path))
    assert "| triplet | **40.00 (1/3 seeds)** | 50.00 (1/3 seeds) |" in md
    assert "| ↳ paper | 43.30 ± 0.38 | — |" in md


def test_a_dry_run_ends_with_a_summary_of_runs_tables_and_missing_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NPAIR_ROOT", str(tmp_path))
    specs = [load_spec("table2_cub200"), load_spec("smoke"), load_spec("smoke")]  # a run shared by two tables
    for spec in specs:
        spec.seeds = [0]
    hand_written = tmp_path / "runs" / "smoke" / "triplet" / "seed0"
    atomic_write_json(hand_written / "metrics.json", {"status": "completed"})  # no config.yaml: unverified
    summary = dry_run(specs, tmp_path, composer([]))
    assert capsys.readouterr().out.rstrip().endswith(summary)
    first, blocked, second, *data = summary.splitlines()
    assert first == (
        "=== dry run: 3 tables (table2_cub200, smoke, smoke), 4 distinct runs: 0 done, "
        "4 to train; 0 re-evaluations of trained runs"
    )
    assert blocked.startswith("1 of the runs to train hold another config or an unverified result")
    assert second.startswith("1 dataset missing for the runs to train")
    assert f"dataset 'cub200' not found at {tmp_path}/data/CUB_200_2011" in data[0]
    assert "make data DATASET=cub200" in data[1]


def test_a_dry_run_without_missing_data_says_so() -> None:
    spec = TableSpec(name="t", title="t", seeds=[0], metrics=[{"key": "nmi"}], rows=[])
    assert dry_run_summary([spec], {("e", 0): "done"}, 0, []).splitlines() == [
        "=== dry run: 1 table (t), 1 distinct run: 1 done, 0 to train; 0 re-evaluations of trained runs",
        "no dataset missing for the runs to train",
    ]
    assert [plural(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]


# ------------------------------------------------------------------------------------ select: rows
def _composed_run(run_dir: Path, experiment: str, overrides: list[str], seed: int = 0) -> str:
    """A completed run directory as npair.train leaves it; returns its config hash."""
    from npair.tables import compose_run

    cfg = compose_run(experiment, seed, overrides)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_json(
        run_dir / "metrics.json",
        {"status": "completed", **identity.hashes(cfg), "final": {"recall@1": 0.5, "nmi": 0.5}},
    )
    return identity.config_hash(cfg)


def _selection_record(root: Path, chosen: float, values: list[float], overrides: list[str]) -> None:
    """The selection.json npair.selection writes for smoke_select's grid (the fields a build compares)."""
    atomic_write_json(
        root / "selection" / "smoke/npair_mc" / "selection.json",
        {
            "key": "loss.reg_weight",
            "values": values,
            "chosen": chosen,
            "metric": "recall@1",
            "higher_is_better": True,
            "seeds": [0],
            "overrides": ["experiment=smoke/npair_mc", *overrides],
            "validation": {"fraction": 0.2, "seed": 0},
            "mean": {str(v): 0.5 for v in values},
        },
    )


def test_the_final_runs_of_select_rows_are_composed_with_the_chosen_value(tmp_path: Path) -> None:
    from npair.tables import table_composer

    specs, overrides = [load_spec("smoke_select")], ["logger=none"]
    for experiment in ("smoke/npair_mc", "smoke/triplet"):
        _composed_run(run_dir_of(tmp_path, experiment, 0), experiment, [*overrides, "loss.reg_weight=0.02"])

    def states() -> dict[str, tuple[str, str]]:
        checks = check_runs(specs, tmp_path, table_composer(specs, tmp_path, overrides))
        return {c.experiment: (c.state, c.reason) for c in checks}

    no_record = states()  # nothing chosen yet: which config the runs must hold is not known
    assert {s for s, _ in no_record.values()} == {"unselected"}
    assert "value not chosen yet: no " in no_record["smoke/triplet"][1]
    _selection_record(tmp_path, 0.02, [0.0, 0.02], overrides)
    assert states() == {"smoke/npair_mc": ("completed", ""), "smoke/triplet": ("completed", "")}
    _selection_record(tmp_path, 0.0, [0.0, 0.02], overrides)  # another value chosen
    assert states()["smoke/npair_mc"] == ("stale", "loss.reg_weight: 0.02 -> 0.0")
    _selection_record(tmp_path, 0.02, [0.0, 0.002], overrides)  # the record of another grid
    state, reason = states()["smoke/npair_mc"]
    assert state == "unselected" and "values: [0.0, 0.002] -> [0.0, 0.02]" in reason
    _selection_record(tmp_path, 0.02, [0.0, 0.02], ["logger=none", "trainer.max_steps=3"])  # other overrides
    assert states()["smoke/triplet"][0] == "unselected"


def test_a_dry_run_lists_and_counts_the_selection_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from npair.tables import table_composer

    specs = [load_spec("smoke_select")]
    sel_dir = tmp_path / "selection" / "smoke/npair_mc"
    _composed_run(
        sel_dir / "reg_weight-0.0" / "seed0",
        "smoke/npair_mc",
        [
            "dataset.validation.fraction=0.2",
            "dataset.validation.seed=0",
            "eval.needs_reference=false",
            "eval.metrics=[recall]",
            "eval.ks=[1]",
            "loss.reg_weight=0.0",
        ],
    )
    summary = dry_run(specs, tmp_path, table_composer(specs, tmp_path, []))
    out = capsys.readouterr().out
    done = f"--- selection smoke/npair_mc loss.reg_weight=0.0 / seed 0 [done] -> {sel_dir}/reg_weight-0.0"
    assert done in out
    assert "--- selection smoke/npair_mc loss.reg_weight=0.02 / seed 0 [missing]" in out
    assert "/ 4-pair-mc (λ selected) / seed 0 [missing] -> " in out
    assert "with loss.reg_weight: value not chosen yet" in out
    lines = summary.splitlines()
    assert lines[0].endswith("2 distinct runs: 0 done, 2 to train; 0 re-evaluations of trained runs")
    assert lines[1] == "2 selection runs (validation classes) of the select: rows: 1 done, 1 to train"
    assert lines[2].startswith("2 of the runs are final runs of select: rows whose value is not chosen yet")
    _selection_record(tmp_path, 0.02, [0.0, 0.02], [])
    dry_run(specs, tmp_path, table_composer(specs, tmp_path, []))
    assert "with loss.reg_weight=0.02 (chosen on validation classes)" in capsys.readouterr().out


def test_a_row_two_tables_share_is_evaluated_again_once(tmp_path: Path, monkeypatch) -> None:
    faces = Row("triplet", "demo/triplet", evaluate_with=["dataset=glyphs_faces", "eval=faces"])
    specs = [TableSpec(name=n, title=n, seeds=[0, 1], metrics=[{"key": "rank1"}], rows=[faces]) for n in "ab"]
    for seed in (0, 1):
        write_run(tmp_path, specs[0], faces, seed, {"recall@1": 0.5})
    atomic_write_json(
        specs[0].result_path(tmp_path, faces, 1), {"status": "completed", "final": {"rank1": 0.2}}
    )
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(
        tables, "evaluate_again", lambda root, row, seed, overrides: calls.append((row.label, seed))
    )
    tables.evaluate_missing(specs, tmp_path, composer([]))
    assert calls == [("triplet", 0)]  # seed 1 already has its result; seed 0 once, not once per table
