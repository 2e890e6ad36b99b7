"""Every plot writes a PNG from study tables, and skips (with a reason) rather than crash on missing data."""

import pandas as pd
import pytest
from _fake_runs import FakeEval, make_config, write_run

from encseg.study import plots
from encseg.study.aggregate import (
    collect_confusions,
    collect_histories,
    collect_per_class,
    collect_results,
    image_area_reader,
)
from encseg.study.stats import summarize

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    for enc, regime, base in [("random", "finetune", 0.4), ("pre", "finetune", 0.5), ("pre", "frozen", 0.45)]:
        for frac in (0.1, 1.0):
            for seed in (0, 1):
                m = base + 0.3 * frac + 0.01 * seed
                write_run(root / "runs", make_config(enc, regime, fraction=frac, seed=seed),
                          evals={"synth_a": FakeEval(m, per_image_miou=[m, m + 0.1]),
                                 "synth_b": FakeEval(m - 0.2)})
    results = collect_results(root)
    return {"results": results, "summary": summarize(results, image_areas=image_area_reader(root), n_boot=100),
            "per_class": collect_per_class(root), "histories": collect_histories(root), "root": root}


def _is_png(path):
    return path.read_bytes()[:8] == PNG


def test_every_plot_writes_a_png(tables, tmp_path):
    t = tables
    best = plots.best_runs(t["results"])
    assert set(best["seed"]) == {1} and set(best["fraction"]) == {1.0}  # seed 1 at 100% scores highest
    confusions = collect_confusions(t["root"], list(zip(best["run_id"], best["eval_dataset"], strict=True)))
    outs = [
        plots.plot_miou_vs_fraction(t["summary"], tmp_path / "a.png"),
        plots.plot_loss_curves(t["histories"], tmp_path / "b.png"),
        plots.plot_epochs_to_converge(t["summary"], tmp_path / "c.png"),
        plots.plot_efficiency(t["summary"], tmp_path / "d.png"),
        plots.plot_cross_dataset(t["summary"], tmp_path / "e.png"),
        plots.plot_per_class_iou(t["per_class"], tmp_path / "f.png"),
        plots.plot_confusions(t["results"], confusions, tmp_path / "g" / "h.png"),
    ]
    for out in outs:
        assert isinstance(out, type(tmp_path)), out  # a Path, not a Skip
        assert _is_png(out)
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "b.png", "c.png", "d.png", "e.png",
                                                           "f.png", "g", "h.png"]


def test_plots_skip_with_a_reason_on_missing_data(tables, tmp_path):
    empty = pd.DataFrame()
    for fn in (plots.plot_miou_vs_fraction, plots.plot_loss_curves, plots.plot_epochs_to_converge,
               plots.plot_efficiency, plots.plot_cross_dataset, plots.plot_per_class_iou):
        r = fn(empty, tmp_path / "x.png")
        assert isinstance(r, plots.Skip) and not r and "no finished runs" in r.reason
    assert not (tmp_path / "x.png").exists()
    # data present but the measurement absent
    s = tables["summary"].copy()
    s[["infer_ms_per_image_mean", "gflops_mean"]] = float("nan")
    assert "inference time" in plots.plot_efficiency(s, tmp_path / "x.png").reason
    own = tables["summary"][tables["summary"]["eval_dataset"] == "synth_a"]
    assert "no cross-dataset" in plots.plot_cross_dataset(own, tmp_path / "x.png").reason
    assert "confusion" in plots.plot_confusions(tables["results"], {}, tmp_path / "x.png").reason
    h = tables["histories"].drop(columns=["loss"])
    assert "loss" in plots.plot_loss_curves(h, tmp_path / "x.png").reason


def test_percent_scale():
    assert plots.percent_scale([0.2, 0.9]) == 100.0
    assert plots.percent_scale([20.0, 90.0]) == 1.0
    assert plots.fraction_label(0.1) == "10%" and plots.fraction_label(0.05) == "5%"
