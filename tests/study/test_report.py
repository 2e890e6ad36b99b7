"""The report of a fake study with known numbers: files, tables, self-contained HTML, failures."""

import base64
import math
import re

import pandas as pd
import pytest
from _fake_runs import FakeEval, default_summary, make_config, pooled_areas, write_run

from encseg.cli import main
from encseg.engine.rundir import run_id
from encseg.study.aggregate import RESULT_COLUMNS
from encseg.study.report import write_report

# mIoU per (encoder, fraction) and seed; pretrained_b gains +0.10 / +0.12 / +0.08 over random at 10%
MIOU = {
    ("random", 0.1): [0.40, 0.42, 0.41], ("random", 1.0): [0.80, 0.81, 0.79],
    ("pretrained_b", 0.1): [0.50, 0.54, 0.49], ("pretrained_b", 1.0): [0.82, 0.84, 0.80],
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "study.yaml").write_text("name: toy\nbaseline: random\nencoders: {}\n")
    for (enc, frac), values in MIOU.items():
        for seed, m in enumerate(values):
            write_run(root / "runs", make_config(enc, fraction=frac, seed=seed),
                      evals={"synth_a": FakeEval(m, per_image_miou=[m - 0.05, m, m + 0.05],
                                                 areas=pooled_areas(m, shift=seed + (enc == "random"))),
                             "synth_b": FakeEval(m - 0.3)})
    write_run(root / "runs", make_config("pretrained_b", "frozen", fraction=0.1, seed=0), state="failed",
              error="ValueError: weights file <bad> not found & more")
    write_run(root / "runs", make_config("pretrained_b", "frozen", fraction=1.0, seed=0), state="partial")
    html_path = write_report(root, n_boot=200)
    return root, html_path


def test_tables_written_with_known_numbers(study):
    root, html_path = study
    assert html_path == root / "report.html"
    results = pd.read_csv(root / "results.csv")
    assert list(results.columns) == RESULT_COLUMNS
    assert len(results) == 12 * 2  # 12 DONE runs x 2 eval datasets
    assert pd.read_parquet(root / "results.parquet").shape == results.shape
    s = pd.read_csv(root / "summary.csv")
    sel = (s["encoder"] == "pretrained_b") & (s["fraction"] == 0.1) & (s["eval_dataset"] == "synth_a")
    row = s[sel].iloc[0]
    assert row["n_seeds"] == 3 and row["miou_mean"] == pytest.approx(0.51)
    assert row["miou_std"] == pytest.approx(math.sqrt((0.01**2 + 0.03**2 + 0.02**2) / 2))
    assert row["gain_miou"] == pytest.approx(0.10) and row["gain_n"] == 3
    # the image bootstrap resamples the dataset-level gain printed beside it
    assert row["gain_boot_low"] < 0.10 < row["gain_boot_high"] and row["gain_boot_images"] == 20
    assert (root / "per_class.csv").is_file()


def test_html_is_self_contained_and_images_decode(study):
    root, html_path = study
    text = html_path.read_text()
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 8  # every plot drawn for this study, the ranking-stability matrix included
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # headline cell: mean ± std in percent, and the best mean of the 10% column in bold
    assert "<b>51.0 ± 2.6</b>" in text and "41.0 ± 1.0" in text
    assert "Encoder study: toy" in text


def test_failures_and_incomplete_runs_are_listed(study):
    root, html_path = study
    text = html_path.read_text()
    failed = text.split("Failed (1)")[1].split("</table>")[0]
    assert "ValueError: weights file &lt;bad&gt; not found &amp; more" in failed  # escaped, not raw HTML
    assert "pretrained_b (frozen)" in failed
    assert "Incomplete (1)" in text
    md = (root / "report.md").read_text()
    assert "ValueError: weights file <bad> not found & more" in md
    for link in re.findall(r"\]\((plots/[^)]+\.png)\)", md):
        assert (root / link).is_file()
    assert "| **51.0 ± 2.6** |" in md


def test_report_cli_prints_the_path_and_errors_cleanly(study, tmp_path, capsys):
    root, html_path = study
    assert main(["study", "report", str(root)]) == 0
    assert capsys.readouterr().out.strip() == str(html_path)
    assert main(["study", "report", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_study_without_finished_runs_still_reports(tmp_path):
    write_run(tmp_path / "runs", make_config(), state="failed")
    text = write_report(tmp_path).read_text()
    assert "No run has finished yet" in text and "Failed (1)" in text
    assert "Skipped: no finished runs" in text
    assert len(pd.read_csv(tmp_path / "results.csv")) == 0


def test_report_shows_paths_relative_to_the_study_directory(tmp_path):
    root = tmp_path / "moved_study"
    write_run(root / "runs", make_config(), evals={"synth_a": FakeEval(0.5)})
    write_run(root / "runs", make_config(seed=1), state="failed",
              error=f"FileNotFoundError: {root.resolve()}/weights/enc.safetensors not found")
    html = write_report(root, n_boot=50).read_text()
    md = (root / "report.md").read_text()
    for text in (html, md):
        assert str(tmp_path.resolve()) not in text and str(tmp_path) not in text
        assert "Study directory: moved_study" in text
    assert "weights/enc.safetensors not found" in html and "weights/enc.safetensors not found" in md


def test_the_per_seed_table_says_where_and_in_which_precision_each_latency_was_timed(tmp_path):
    root = tmp_path / "study"
    gpu, cpu = make_config(), make_config(seed=1)
    write_run(root / "runs", gpu, evals={"synth_a": FakeEval(0.5)},
              summary=default_summary(gpu, run_id(gpu), latency_device="cuda", latency_precision="bf16-mixed"))
    # written before the precision was recorded: the engine then timed in fp32
    write_run(root / "runs", cpu, evals={"synth_a": FakeEval(0.5)},
              summary=default_summary(cpu, run_id(cpu), latency_device="cpu"))
    write_report(root, n_boot=50)
    results = pd.read_csv(root / "results.csv").sort_values("seed")
    assert list(results["latency_precision"]) == ["bf16-mixed", "32-true"]
    md = (root / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run |"))
    assert "| ms / image | timed on |" in header
    assert "| cuda, bf16-mixed |" in md and "| cpu, 32-true |" in md
    assert "latency timed on cpu, 32-true; cuda, bf16-mixed" in md
