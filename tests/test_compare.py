"""`lightprune compare`: options, bad input, and small end-to-end comparisons through the console script
(results.csv, report.md, PNGs, offline W&B runs, resuming after an interruption)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightprune.compare import CSV_COLUMNS, PAIR_KEYS, build_parser, parse_config, spearman_matrices
from lightprune.errors import ConfigError
from wandb_offline import read_run

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = str(ROOT / "configs" / "compare_criteria.yaml")
CRITERIA = ["l1", "fpgm", "apoz"]
RATIOS = [0.4, 0.6]
# A small comparison: 3 criteria x 2 ratios, base model trained 2 short epochs, 1 short fine-tuning epoch.
SMALL = [
    "--config", CONFIG,
    "--criteria", json.dumps(CRITERIA),
    "--ratios", json.dumps(RATIOS),
    "--train_epochs", "2",
    "--recipe_overrides", json.dumps(["--trainer.limit_train_batches=6", "--trainer.limit_val_batches=1"]),
    "--samples_per_class", "8",
    "--finetune.epochs", "1",
    "--finetune.limit_train_batches", "6",
    "--latency_batch_size", "16",
    "--latency_runs", "2",
    "--progress", "false",
    "--threads", "1",
]
PNG = b"\x89PNG\r\n\x1a\n"


def run(args, cwd, timeout=600, **env):
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env}
    return subprocess.run(
        [str(BIN / "lightprune"), "compare", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def rows_of(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "results.csv") as fh:
        return list(csv.DictReader(fh))


def run_record(run_dir: Path):
    """The run record (group, job type, name, initial config) of an offline W&B run."""
    run = read_run(run_dir)["run"]
    assert run, f"no run record in {run_dir}"
    return run["group"], run["job_type"], run["name"], run["config"]


# --------------------------------------------------------------------------------------------------
# options and bad input (in process: fast)
# --------------------------------------------------------------------------------------------------
def test_shipped_config_parses_and_lists_every_criterion():
    import lightprune as lp

    cfg = parse_config(["--config", CONFIG])
    assert cfg.criteria == lp.list_criteria()
    assert cfg.strategy == "uniform" and cfg.ratios == [0.3, 0.5, 0.7] and cfg.wandb
    assert isinstance(cfg.recipe, dict) and cfg.recipe["model"]["init_args"]["model"] == "cifar_vgg16"
    assert cfg.run_dir == (Path.cwd() / "runs" / "compare_digits").resolve()
    assert cfg.group == "compare_digits"


def test_print_config_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--config", CONFIG, "--ratios", "[0.3, 0.7]", "--print_config"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "ratios:" in printed and "finetune:" in printed and "wandb_project:" in printed
    saved = tmp_path / "c.yaml"
    saved.write_text(printed)
    cfg = parse_config(["--config", str(saved)])
    assert cfg.ratios == [0.3, 0.7]


def test_paths_in_a_config_file_are_relative_to_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "recipe.yaml").write_text("model: {}\ndata: {}\n")
    (tmp_path / "sub" / "c.yaml").write_text("recipe: recipe.yaml\ncriteria: [l1]\n")
    cfg = parse_config(["--config", str(tmp_path / "sub" / "c.yaml"), "--ratios", "0.3"])
    assert cfg.recipe == tmp_path / "sub" / "recipe.yaml"
    assert cfg.ratios == [0.3]


@pytest.mark.parametrize(
    "override,pattern",
    [
        (["--criteria", "[l1, nope]"], r"criteria contains 'nope', which is not a registered criterion; known criteria: afie, apoz"),
        (["--ratios", "[0.5, 1.2]"], r"ratios\[1\]=1.2 is not allowed; it must lie in \[0, 1\)"),
        (["--ratios", "-0.1"], r"ratios\[0\]=-0.1 is not allowed"),
        (["--strategy", "greedy"], r"strategy='greedy' is not allowed; choose one of: uniform, afie, global, flops"),
        (["--strategy", "manual"], r"strategy='manual' is not allowed in a comparison"),
        (["--checkpoint", "missing.ckpt"], r"checkpoint='.*missing.ckpt' does not exist"),
        (["--recipe", "missing.yaml"], r"recipe='.*missing.yaml' does not exist"),
        (["--samples_per_class", "0"], r"samples_per_class=0 is not allowed; it must be an integer >= 1"),
        (["--finetune.schedule", "step"], r"finetune.schedule='step' is not allowed; choose one of: cosine, constant"),
        (["--criterion_hparams", "{taylor: {x: 1}}", "--criteria", "[taylor]"], r"bad hyperparameters for criterion 'taylor'"),
        (["--criterion_hparams", "{l1: {}}", "--criteria", "[fpgm]"], r"criterion_hparams names 'l1', which is not among"),
    ],
)
def test_bad_input_names_argument_value_and_allowed(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_config(["--config", CONFIG, *override])


def test_bad_input_through_console_script(tmp_path):
    res = run(["--config", CONFIG, "--criteria", "[l1, nope]"], tmp_path)
    assert res.returncode == 2
    assert "lightprune compare: error: criteria contains 'nope'" in res.stderr
    assert "Traceback" not in res.stderr
    res = run(["--help"], tmp_path)
    assert res.returncode == 0
    for opt in ("--recipe", "--checkpoint", "--criteria", "--strategy", "--ratios", "--samples_per_class",
                "--finetune.epochs", "--wandb", "--wandb_project", "--print_config", "--run_dir"):
        assert opt in res.stdout, opt


def test_spearman_matrices():
    s = {
        "a": {"x": [1.0, 2.0, 3.0, 4.0], "y": [1.0, 1.0, 1.0]},
        "b": {"x": [4.0, 3.0, 2.0, 1.0], "y": [3.0, 1.0, 2.0]},
    }
    mean, per = spearman_matrices(s, ["x", "y"])
    assert per[0, 0, 1] == pytest.approx(-1.0)
    assert per[1, 0, 1] != per[1, 0, 1]  # NaN: 'a' gives every channel of 'y' the same score
    assert mean[0, 1] == pytest.approx(-1.0) and mean[1, 1] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------
# end to end through the console script
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("compare")
    t0 = time.perf_counter()
    res = run([*SMALL, "--run_dir", "runs/small"], cwd)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-5000:])
    return cwd / "runs" / "small", res, time.perf_counter() - t0


def test_results_csv_has_one_sane_row_per_pair(small_run):
    run_dir, res, _ = small_run
    assert "no checkpoint given: training the base model" in res.stdout
    assert (run_dir / "base.ckpt").is_file()
    rows = rows_of(run_dir)
    assert list(rows[0]) == CSV_COLUMNS
    assert sorted((r["criterion"], float(r["ratio"])) for r in rows) == sorted((c, r) for c in CRITERIA for r in RATIOS)
    for r in rows:
        for key in ("val_acc_before_ft", "test_acc_before_ft", "val_acc", "val_balanced_acc", "test_acc", "test_balanced_acc", "base_test_acc"):
            assert 0.0 <= float(r[key]) <= 1.0, (key, r)
        assert 0 < int(r["params"]) < int(r["params_base"])
        assert 0 < int(r["macs"]) < int(r["macs_base"])
        assert abs(float(r["channel_ratio"]) - float(r["ratio"])) < 0.03, r
        assert 0 < float(r["params_pruned_ratio"]) < 1 and 0 < float(r["macs_pruned_ratio"]) < 1
        assert float(r["img_per_s"]) > 0 and float(r["latency_ms"]) > 0
        assert float(r["acc_drop"]) == pytest.approx(float(r["base_test_acc"]) - float(r["test_acc"]), abs=1e-6)
        assert r["wandb_run"]
    # the same ratio prunes the same amount whatever the criterion (uniform strategy)
    for ratio in RATIOS:
        assert len({r["params"] for r in rows if float(r["ratio"]) == ratio}) == 1
    # more pruning, fewer parameters
    p = {float(r["ratio"]): int(r["params"]) for r in rows if r["criterion"] == "l1"}
    assert p[0.6] < p[0.4]


def test_report_and_plots(small_run):
    run_dir, _, _ = small_run
    report = (run_dir / "report.md").read_text()
    for col in ("acc. before FT", "acc. after FT", "acc. drop", "pruned (params)", "#params", "MACs", "img/s"):
        assert col in report
    for c in CRITERIA:
        assert re.search(rf"^\| {c} \| 0.4 \|", report, re.M), report
    for name in ("layer_ratios", "acc_vs_macs", "acc_vs_ratio", "score_correlation", "score_correlation_layers"):
        png = run_dir / f"{name}.png"
        data = png.read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name
        assert f"({name}.png)" in report
    from PIL import Image

    with Image.open(run_dir / "score_correlation.png") as im:
        assert im.size[0] > 200 and im.size[1] > 200
    sp = list(csv.reader(open(run_dir / "spearman.csv")))
    assert sp[0] == ["criterion", *CRITERIA]
    assert float(sp[1][1]) == pytest.approx(1.0)  # l1 with itself
    # the scores are computed once per criterion and kept
    assert sorted(p.stem for p in (run_dir / "scores").glob("*.json")) == sorted(CRITERIA)


def test_wandb_offline_runs_are_grouped_with_identical_keys(small_run):
    run_dir, _, _ = small_run
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    pair_runs, summary_runs = [], []
    for d in runs:
        group, job_type, name, config = run_record(d)
        assert group == "small"
        (pair_runs if job_type == "prune" else summary_runs).append((d, name, config))
    assert len(pair_runs) == len(CRITERIA) * len(RATIOS) and len(summary_runs) == 1
    assert sorted(n for _, n, _ in pair_runs) == sorted(f"{c}@{r:g}" for c in CRITERIA for r in RATIOS)
    key_sets = []
    for d, name, config in pair_runs:
        assert config["criterion"] == name.split("@")[0] and config["ratio"] == float(name.split("@")[1])
        assert config["compare_group"] == "small" and config["finetune"]["epochs"] == 1
        logged = read_run(d)
        summary = logged["summary"]
        assert set(PAIR_KEYS) <= set(summary), set(PAIR_KEYS) - set(summary)
        for key in ("val/acc", "val/balanced_acc", "test/acc", "test/balanced_acc", "val/acc_before_ft"):
            assert 0.0 <= summary[key] <= 1.0
        assert any(k.startswith("prune/ratio/features.") for k in summary)
        assert any(k.startswith("scores/features.") for k in summary)
        assert any(k.startswith("charts/layer_ratio") for k in summary)
        assert any("train/loss_epoch" in step for step in logged["history"])  # fine-tuning curve
        key_sets.append({k.split("/_")[0] for k in summary if not k.startswith("_")})
    assert all(ks == key_sets[0] for ks in key_sets)  # identical metric keys across runs
    summary = read_run(summary_runs[0][0])["summary"]
    assert any(k.startswith("summary/table") for k in summary)
    assert any(k.startswith("plots/acc_vs_macs") for k in summary)


def test_deleted_pair_reruns_alone(small_run, tmp_path):
    """Resume granularity: with one pair's result gone, a rerun redoes exactly that pair."""
    src, _, _ = small_run
    run_dir = tmp_path / "runs" / "small"
    shutil.copytree(src, run_dir)
    pairs = run_dir / "pairs"
    before = {p.name: p.stat().st_mtime_ns for p in pairs.glob("*.json")}
    (pairs / "fpgm_r0.6.json").unlink()
    res = run([*SMALL, "--run_dir", "runs/small"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "5 already done (skipped), 1 to run" in res.stdout
    assert "no checkpoint given" not in res.stdout  # the saved base checkpoint is reused
    assert "done fpgm @ 0.6" in res.stdout + res.stderr
    after = {p.name: p.stat().st_mtime_ns for p in pairs.glob("*.json")}
    assert after.keys() == before.keys()
    assert {k for k in after if after[k] != before.get(k)} == {"fpgm_r0.6.json"}
    assert len(rows_of(run_dir)) == 6
    new_runs = [d for d in (run_dir / "wandb").glob("offline-run-*") if not (src / "wandb" / d.name).exists()]
    assert sorted(run_record(d)[2] for d in new_runs) == ["fpgm@0.6", "summary"]


@pytest.mark.slow
def test_rerun_does_no_work_and_changed_budget_is_stale(small_run, tmp_path):
    src, _, _ = small_run
    run_dir = tmp_path / "runs" / "small"
    shutil.copytree(src, run_dir)
    pairs = run_dir / "pairs"
    before = {p.name: p.stat().st_mtime_ns for p in pairs.glob("*.json")}
    res = run([*SMALL, "--run_dir", "runs/small"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "6 already done (skipped), 0 to run" in res.stdout
    assert {p.name: p.stat().st_mtime_ns for p in pairs.glob("*.json")} == before
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == len(list((src / "wandb").glob("offline-run-*")))
    # a changed fine-tuning budget is another comparison: the pair is stale and redone
    res = run([*SMALL, "--run_dir", "runs/small", "--finetune.epochs", "0", "--criteria", "[l1]", "--ratios", "[0.4]"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "0 already done (skipped), 1 to run" in res.stdout
    row = rows_of(run_dir)[0]
    assert row["test_acc"] == row["test_acc_before_ft"] and float(row["finetune_s"]) == 0


@pytest.mark.slow
def test_killed_comparison_resumes(tmp_path):
    """Kill the process (SIGKILL) once two pairs are saved; the rerun skips them and does the rest."""
    args = [*SMALL, "--run_dir", "runs/killed", "--wandb", "false"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.Popen([str(BIN / "lightprune"), "compare", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pairs = tmp_path / "runs" / "killed" / "pairs"
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(pairs.glob("*.json"))) >= 2:
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = sorted(p.stem for p in pairs.glob("*.json"))
    assert 2 <= len(done) < 6, done
    assert not (tmp_path / "runs" / "killed" / "results.csv").exists()
    res = run(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{len(done)} already done (skipped), {6 - len(done)} to run" in res.stdout
    for stem in done:
        crit, ratio = stem.rsplit("_r", 1)
        assert f"skip {crit} @ {ratio}" in res.stdout
    assert len(rows_of(tmp_path / "runs" / "killed")) == 6
    assert not list((tmp_path / "runs" / "killed").glob("wandb"))  # wandb: false


@pytest.mark.slow
def test_global_strategy_and_afie_rule(tmp_path):
    """Non-uniform strategies: 'global' gives per-criterion layer ratios; 'afie' gives every criterion
    the AFIE layer ratios (so the per-layer channel counts agree across criteria)."""
    from lightprune.compare import Comparison

    base = [*SMALL, "--wandb", "false", "--ratios", "[0.5]", "--criteria", "[l1, apoz]", "--finetune.epochs", "0"]
    cfg = parse_config([*base, "--run_dir", str(tmp_path / "g"), "--strategy", "global"])
    rows = Comparison(cfg, echo=lambda *a: None).run()
    assert {r["criterion"] for r in rows} == {"l1", "apoz"}
    assert all(abs(r["row"]["channel_ratio"] - 0.5) < 0.01 for r in rows)
    cfg = parse_config([*base, "--run_dir", str(tmp_path / "g"), "--strategy", "afie", "--checkpoint", str(tmp_path / "g" / "base.ckpt")])
    rows = Comparison(cfg, echo=lambda *a: None).run()
    assert rows[0]["channels_after"] == rows[1]["channels_after"]
    assert "AFIE layer scores" in (tmp_path / "g" / "report.md").read_text()


def test_dashboard_spec_uses_logged_keys():
    from lightprune.compare import dashboard_spec

    spec = dashboard_spec("lightprune-compare", "compare_digits")
    assert spec["filter"] == {"group": "compare_digits", "job_type": "prune"}
    metrics = {m for sec in spec["sections"] for p in sec["panels"] for m in p.get("metrics", [])}
    metrics |= {p[k] for sec in spec["sections"] for p in sec["panels"] for k in ("x", "y") if isinstance(p.get(k), str)}
    logged = set(PAIR_KEYS) | {"trainer/global_step", "ratio (config)"}
    assert metrics <= logged, metrics - logged


def test_wandb_workspace_structure_offline():
    """The workspace view is built with wandb-workspaces (not saved, nothing sent): its sections,
    panels and run grouping are those of dashboard_spec."""
    pytest.importorskip("wandb_workspaces")
    from lightprune.compare.wandb_log import build_workspace, dashboard_spec

    view = build_workspace("lightprune-compare", "digits", entity="someone")
    spec = dashboard_spec("lightprune-compare", "digits")
    assert view.name == spec["name"] == "compare: digits" and view.project == "lightprune-compare"
    assert [s.name for s in view.sections] == [s["name"] for s in spec["sections"]]
    accuracy = view.sections[0].panels
    assert [p.title for p in accuracy] == [p["title"] for p in spec["sections"][0]["panels"]]
    assert [p.title for p in view.sections[1].panels] == [p["title"] for p in spec["sections"][1]["panels"]]
    assert [g.name for g in view.runset_settings.groupby] == ["criterion"]
    assert "Group" in str(view.runset_settings.filters) and "'digits'" in str(view.runset_settings.filters)
    assert "JobType" in str(view.runset_settings.filters)
