"""Convergence in the study's records: results.csv columns, unconverged cells marked in tables, plots and the
'in brief' claims, and the compute a converge-budget study used against its fixed schedule."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from _fake_runs import FakeEval, default_summary, make_config, write_run

from encseg.engine.rundir import RunDir, run_id
from encseg.study import plots
from encseg.study.aggregate import CONVERGENCE_FIELDS, StudyDataError, collect_results, compute_used
from encseg.study.report import write_report
from encseg.study.stats import add_convergence, summarize
from encseg.study.tables import DAGGER

# random at 100 % seed 1 hit its cap unconverged (its engine still wrote an epochs value: it must not be used)
MIOU = {("random", 0.1): [0.40, 0.42], ("random", 1.0): [0.60, 0.70],
        ("pretrained_b", 0.1): [0.50, 0.54], ("pretrained_b", 1.0): [0.82, 0.84]}
UNCONVERGED = ("random", 1.0, 1)


def _summary(cfg, rid, enc, frac, seed):
    conv = (enc, frac, seed) != UNCONVERGED
    iters = 400 if conv else 1000  # converge budget, cap max_iters = 1000
    return default_summary(cfg, rid, converged=conv, converged_iter=300 if conv else None,
                           epochs_to_converge=3.0 + seed if conv else 99.0, iters_trained=iters,
                           epochs_trained=iters / 100, train_wall_s=iters * 0.5, budget="converge",
                           max_iters=1000)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "study.yaml").write_text("name: conv\nbaseline: random\nencoders: {}\n")
    for (enc, frac), values in MIOU.items():
        for seed, m in enumerate(values):
            cfg = make_config(enc, fraction=frac, seed=seed, max_iters=1000)
            rid = run_id(cfg)
            write_run(root / "runs", cfg, evals={"synth_a": FakeEval(m), "synth_b": FakeEval(m - 0.3)},
                      summary=_summary(cfg, rid, enc, frac, seed))
    html = write_report(root, n_boot=50)
    return root, html.read_text(), (root / "report.md").read_text()


def test_results_csv_carries_the_convergence_record(study):
    root, _, _ = study
    res = pd.read_csv(root / "results.csv")
    assert set(CONVERGENCE_FIELDS) <= set(res.columns)
    bad = res[(res["encoder"] == "random") & (res["fraction"] == 1.0) & (res["seed"] == 1)]
    assert len(bad) == 2 and not bad["converged"].any()  # one row per eval dataset, both unconverged
    # epochs_to_converge is where the criterion fired, so an unconverged run has none (the engine's 99 is dropped)
    assert bad["epochs_to_converge"].isna().all()
    good = res[~((res["encoder"] == "random") & (res["fraction"] == 1.0) & (res["seed"] == 1))]
    assert good["converged"].all() and good["epochs_to_converge"].notna().all()
    assert set(res["iters_trained"]) == {400, 1000} and set(res["budget"]) == {"converge"}
    assert (res["max_iters"] == 1000).all()
    crit = json.loads(res["criterion"].iloc[0])
    assert crit["patience"] == 5 and crit["min_delta"] == 0.005


def test_summary_counts_converged_seeds_and_the_baseline(study):
    root, _, _ = study
    s = pd.read_csv(root / "summary.csv")
    own = s[s["eval_dataset"] == "synth_a"].set_index(["encoder", "fraction"])
    assert own.loc[("random", 1.0), "n_converged"] == 1 and not own.loc[("random", 1.0), "all_converged"]
    assert own.loc[("random", 0.1), "all_converged"] and own.loc[("pretrained_b", 1.0), "all_converged"]
    # pretrained_b at 100 % converged, but its gain is measured against an unconverged baseline
    assert not own.loc[("pretrained_b", 1.0), "baseline_all_converged"]
    assert own.loc[("pretrained_b", 0.1), "baseline_all_converged"]


def _brief(text: str) -> str:
    return text.split("In brief")[1].split("Headline")[0]


def test_tables_and_brief_mark_exactly_the_unconverged_cells(study):
    _, html, md = study
    # headline: random 100 % (65.0 ± 7.1) is marked, its converged 10 % cell (41.0 ± 1.4) is not
    assert f"65.0 ± 7.1 {DAGGER}" in html and f"41.0 ± 1.4 {DAGGER}" not in html and "41.0 ± 1.4" in html
    assert f"83.0 ± 1.4 {DAGGER}" not in html  # pretrained_b converged: its own number is clean
    # the gain at 100 % (+18.0 against the unconverged baseline) is marked; the 10 % gain (+11.0) is not
    assert f"+18.0 {DAGGER}" in html and f"+11.0 {DAGGER}" not in html
    assert "Not every seed of this cell converged" in html
    line = next(x for x in _brief(md).splitlines() if x.startswith("- pretrained_b (finetune)"))
    at_small, at_large = line.split("at 10% (")[1].split(")")[0], line.split("at 100% (")[1].split(")")[0]
    assert "unconverged" not in at_small and "rests on unconverged runs" in at_large
    # the per-seed table says which run did not converge and how far it trained
    assert f"1000 / 1000 | no {DAGGER}" in md and "400 / 1000 | yes" in md


def test_compute_used_against_the_fixed_schedule(study):
    root, _, md = study
    c = compute_used(root)
    assert len(c) == 8 and (c["fixed_iters"] == 1000).all()
    assert c["iters_trained"].sum() == 7 * 400 + 1000
    # the fixed schedule is costed at each run's own measured 0.5 s per iteration, on 1 GPU
    assert c["fixed_wall_s"].sum() == pytest.approx(8 * 1000 * 0.5)
    assert c["gpu_hours"].sum() == pytest.approx(3800 * 0.5 / 3600)
    section = md.split("Compute used vs the fixed schedule")[1]
    assert "| all runs | 8 | 3800 | 8000 | 48% |" in section


def _capture(monkeypatch) -> list:
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: figs.append(fig) or out)
    return figs


def _tables(root):
    results = collect_results(root)
    return add_convergence(summarize(results), results, "random", "finetune")


def test_miou_plot_draws_unconverged_cells_hollow(study, monkeypatch, tmp_path):
    root, _, _ = study
    figs = _capture(monkeypatch)
    plots.plot_miou_vs_fraction(_tables(root), tmp_path / "m.png")
    ax = figs[0].axes[0]  # panel synth_a -> synth_a
    hollow = [ln for ln in ax.get_lines() if ln.get_linestyle() == "None" and ln.get_markerfacecolor() == "white"]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [1.0]
    assert hollow[0].get_ydata()[0] == pytest.approx(65.0)
    assert "hollow: not every seed converged" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_epochs_plot_uses_converged_runs_only(study, monkeypatch, tmp_path):
    root, _, _ = study
    figs = _capture(monkeypatch)
    plots.plot_epochs_to_converge(_tables(root), tmp_path / "e.png")
    ax = figs[0].axes[0]
    heights = sorted(round(p.get_height(), 3) for p in ax.patches if not math.isnan(p.get_height()))
    # converged seeds record 3.0 (seed 0) and 4.0 (seed 1); random 100 % keeps its one converged seed (3.0),
    # never the 99 its unconverged seed's engine wrote
    assert heights == [3.0, 3.5, 3.5, 3.5]
    partial = [p for p in ax.patches if p.get_hatch() == "//"]
    assert len(partial) == 1 and partial[0].get_height() == pytest.approx(3.0)
    assert "1/2" in [t.get_text() for t in ax.texts]


def test_unrecorded_convergence_is_flagged_and_bad_values_are_named(tmp_path):
    cfg = make_config()
    rd = RunDir(tmp_path / "runs" / run_id(cfg))
    old = default_summary(cfg, rd.name)
    for key in CONVERGENCE_FIELDS:
        old.pop(key)
    write_run(tmp_path / "runs", cfg, summary=old)
    res = collect_results(tmp_path)
    assert res["converged"].isna().all() and res["epochs_to_converge"].isna().all()
    assert res["budget"].iloc[0] == "iters" and res["max_iters"].iloc[0] == 100  # from config.yaml
    s = add_convergence(summarize(res), res, "random", "finetune")
    assert not s["all_converged"].any()  # not recorded counts as not converged
    text = write_report(tmp_path, n_boot=10).read_text()
    assert f"not recorded {DAGGER}" in text

    bad = default_summary(cfg, rd.name, converged="yes")
    (rd.path / "summary.json").write_text(json.dumps(bad))
    with pytest.raises(StudyDataError, match=r"summary\.json: converged"):
        collect_results(tmp_path)
    bad = default_summary(cfg, rd.name, iters_trained="many")
    (rd.path / "summary.json").write_text(json.dumps(bad))
    with pytest.raises(StudyDataError, match=r"summary\.json: iters_trained"):
        collect_results(tmp_path)


def test_all_converged_study_says_so(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / "runs", make_config("random", seed=seed))
        write_run(tmp_path / "runs", make_config("pretrained_b", seed=seed),
                  evals={"synth_a": FakeEval(0.7 + seed / 100)})
    text = write_report(tmp_path, n_boot=10).read_text()
    assert DAGGER not in text.split("Per-seed results")[0]
    assert "Every cell converged on every seed" in text and text.count("Every cell converged") == 1
    assert np.isfinite(pd.read_csv(tmp_path / "summary.csv")["epochs_to_converge_mean"]).all()


def test_epochs_plot_keeps_a_cell_where_no_seed_converged(monkeypatch, tmp_path):
    figs = _capture(monkeypatch)
    summary = pd.DataFrame({
        "encoder": ["random", "random"], "regime": "finetune", "train_dataset": "synth_a",
        "eval_dataset": "synth_a", "cross": False, "fraction": [0.1, 1.0],
        "epochs_to_converge_mean": [4.0, math.nan], "epochs_to_converge_std": [0.5, math.nan],
        "n_seeds": [2, 2], "n_converged": [2, 0], "all_converged": [True, False]})
    plots.plot_epochs_to_converge(summary, tmp_path / "e.png")
    ax = figs[0].axes[0]
    assert [t.get_text() for t in ax.texts] == ["0/2"]  # no bar, but the cell is labelled, not silently dropped
    assert [p.get_height() for p in ax.patches if not math.isnan(p.get_height())] == [4.0]
    summary["epochs_to_converge_mean"] = math.nan
    assert not plots.plot_epochs_to_converge(summary, tmp_path / "e2.png")  # Skip: nothing converged
