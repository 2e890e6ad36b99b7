"""``encseg study report STUDY_DIR``: tables, statistics, plots, and one self-contained HTML page.

Writes into the study directory: ``results.csv`` / ``results.parquet`` (one row per run x eval dataset),
``per_class.csv``, ``summary.csv`` (``stats.summarize``), ``label_efficiency.csv``, ``ranking_*.csv``,
``plots/*.png``, ``report.html`` and ``report.md``. This module lays out the sections; the numbers become
tables in ``study.tables``, sentences in ``study.brief``, and the blocks become HTML and Markdown in
``study.render``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from encseg.atomic import atomic_write_bytes, atomic_write_text
from encseg.study import aggregate, plots, stats, tables
from encseg.study.brief import brief_sentences, protocol_items, ranking_sentence, unconverged_note
from encseg.study.config import StudyBaseline
from encseg.study.insights import Insights, compute_insights
from encseg.study.render import (
    Block,
    Bullets,
    Heading,
    Image,
    Para,
    relative_paths,
    render_html,
    render_markdown,
)
from encseg.study.tables import (
    compute_table,
    criterion_table,
    efficiency_table,
    encoder_table,
    failure_tables,
    gain_table,
    headline_tables,
    per_seed_table,
    ranking_settings_table,
    ranking_tau_table,
)

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------- study file
def read_study_meta(study_dir: Path) -> dict[str, Any]:
    """``name``, ``baseline`` and ``baseline_regime`` from ``<study_dir>/study.yaml`` when it has them.

    The study file's schema belongs to ``study.config`` (``baseline: {encoder, regime}``, or the shorthand
    ``baseline: <label>``); only these optional keys are read, and an unreadable file leaves the defaults
    (``random``, ``finetune``) with a warning rather than stopping the report.
    """
    default = StudyBaseline()
    meta: dict[str, Any] = {"name": study_dir.resolve().name, "baseline": default.encoder,
                            "baseline_regime": default.regime}
    path = study_dir / "study.yaml"
    if not path.is_file():
        return meta
    try:
        data = yaml.safe_load(path.read_text()) or {}
        base = StudyBaseline.model_validate(data.get("baseline") or {}) if isinstance(data, dict) else default
    except (yaml.YAMLError, OSError, ValueError) as e:
        log.warning("%s: unreadable baseline (%s); using the default baseline %s", path, e, default.label())
        return meta
    if isinstance(data.get("name"), str) and data["name"].strip():
        meta["name"] = data["name"].strip()
    meta.update(baseline=base.encoder, baseline_regime=base.regime)
    return meta


def insight_blocks(ins: Insights, summary: pd.DataFrame, scale: float,
                   tau_image: Image) -> tuple[list[Block], list[Block]]:
    """(the opening "In brief" blocks, the label-efficiency and ranking-stability sections)."""
    brief: list[Block] = [Heading(2, "In brief")]
    brief.append(Para(f"Per encoder, in-domain: the paired gain over {ins.baseline_label} at the smallest and "
                      "largest fraction, and the labels it needs to match the baseline at 100%; each claim "
                      "with its 95% interval over training seeds and its caveats. The gains' tests are "
                      "Holm-adjusted over all the gains stated here."
                      + ("" if ins.convergence_recorded else " The runs do not record whether they "
                         "converged (no converged column), so no claim can be checked against it.")))
    brief.append(Bullets([*brief_sentences(summary, ins, scale), ranking_sentence(ins)]))
    sections: list[Block] = [
        Heading(2, "Label efficiency"),
        Para("The smallest labelled fraction at which an encoder's mean mIoU reaches a reference's mean mIoU at "
             "100% (the largest fraction when the study has no 100%), interpolated on log(fraction) between the "
             "two studied fractions around the first crossing; never extrapolated beyond the studied fractions. "
             "Intervals over training seeds: a parametric bootstrap from the cell means' moderated t "
             "distributions; a side the study cannot bound is named instead of a number (docs/protocol.md)."),
        efficiency_table(ins, scale),
        Heading(2, "Ranking stability"),
        Para("Within a setting, two encoders are ordered (>) when the moderated 95% interval of their paired "
             "difference excludes 0, and tied (≈) otherwise. Kendall's tau-b between the tie-aware rankings of "
             "every pair of settings; 1 = the same order, −1 = reversed. Intervals: the most discordant and "
             "the most concordant orders the pairwise tests allow."),
        *stability_blocks(ins, tau_image),
    ]
    return brief, sections


def stability_blocks(ins: Insights, image: Image) -> list[Block]:
    st = ins.stability
    blocks: list[Block] = [Para(ranking_sentence(ins)), ranking_settings_table(ins)]
    undefined = int(st.pairs["tau"].isna().sum())
    if undefined:
        blocks.append(Para(f"{undefined} of {len(st.pairs)} pairs of settings have no "
                           "defined tau (fewer than 2 encoders in common, or all tied); ranking_tau.csv lists "
                           "them with the reason."))
    tau = ranking_tau_table(ins)
    if tau is not None:
        blocks.append(tau)
    blocks.append(image)
    return blocks


def protocol_blocks(protocol: pd.DataFrame, results: pd.DataFrame, summary: pd.DataFrame,
                    ins: Insights | None, n_boot: int) -> list[Block]:
    if protocol.empty:
        return [Para("No finished run to read the protocol from.")]
    blocks: list[Block] = [Bullets(protocol_items(protocol, results, summary, ins, n_boot))]
    criteria = criterion_table(results)
    if criteria is not None:
        blocks += [Heading(3, "Convergence criterion"), criteria]
    return [*blocks, Heading(3, "Encoders"), encoder_table(protocol, results)]


def build_blocks(study_dir: Path, meta: dict, results: pd.DataFrame, summary: pd.DataFrame,
                 figures: list[Image], failures: pd.DataFrame, incomplete: pd.DataFrame,
                 protocol: pd.DataFrame, n_boot: int, insights: Insights | None = None,
                 tau_image: Image | None = None, compute: pd.DataFrame | None = None) -> list[Block]:
    baseline, base_label = meta["baseline"], f"{meta['baseline']} ({meta['baseline_regime']})"
    scale = plots.percent_scale(results["miou"]) if not results.empty else 100.0
    unit = "mIoU in %" if scale == 100 else "mIoU"
    blocks: list[Block] = [Heading(1, f"Encoder study: {meta['name']}")]
    n_runs = results["run_id"].nunique() if not results.empty else 0
    blocks.append(Para(f"Study directory: {study_dir.resolve().name} (paths below are relative to it). "
                       f"{n_runs} finished runs, {len(failures)} failed, {len(incomplete)} incomplete."))
    brief, insight_sections = (insight_blocks(insights, summary, scale, tau_image)
                               if insights is not None and tau_image is not None else ([], []))
    blocks.extend(brief)
    blocks.append(Heading(2, "The question"))
    blocks.append(Para(f"How much does each pretrained encoder improve semantic segmentation over the "
                       f"{base_label} baseline (the same architecture and recipe), at each fraction of labelled "
                       "training images? The segmentation head, neck and recipe are fixed; only the encoder and "
                       "its training regime change."))
    if results.empty:
        blocks.append(Para("No run has finished yet: there is nothing to summarise."))
    else:
        if not ((results["encoder"] == baseline) & (results["regime"] == meta["baseline_regime"])).any():
            blocks.append(Para(f"No finished {base_label} run: gains cannot be computed."))
        blocks.append(Heading(2, f"Headline: {unit}, mean ± std over seeds"))
        blocks.append(Para("Best mean per column in bold."))
        blocks.extend(headline_tables(summary, baseline, scale))
        blocks.extend(unconverged_note(summary))
        blocks.append(Heading(2, f"Gain over {base_label}"))
        blocks.append(Para("Gain = encoder − baseline on runs paired by seed and subset seed, in mIoU "
                           "points, with the same head, datasets and fraction; p-values two-sided, not adjusted "
                           "(the brief adjusts its claims). Two intervals: over training seeds (moderated t; "
                           "what a rerun with new seeds and subsets would give) and over evaluation images "
                           "(the trained models fixed; what another test set of this size would give)."))
        blocks.append(gain_table(summary, baseline, scale))
        blocks.extend(unconverged_note(summary, "a gain is marked when the cell or its baseline did not converge"))
        blocks.extend(insight_sections)
    blocks.append(Heading(2, "Plots"))
    blocks.extend(figures)
    blocks.append(Heading(2, "Per-seed results"))
    blocks.append(per_seed_table(results, scale) if not results.empty else Para("None."))
    blocks.append(Heading(2, "Failed and incomplete runs"))
    if failures.empty and incomplete.empty:
        blocks.append(Para("None: every run finished."))
    blocks.extend(failure_tables(failures, incomplete))
    blocks.extend(compute_blocks(compute))
    blocks.append(Heading(2, "Protocol"))
    blocks.extend(protocol_blocks(protocol, results, summary, insights, n_boot))
    blocks.append(Heading(2, "Files"))
    blocks.append(Para("results.csv / results.parquet (one row per run x eval dataset), per_class.csv, "
                       "summary.csv (statistics per cell), label_efficiency.csv, ranking_settings.csv, "
                       "ranking_tau.csv, plots/*.png, report.md."))
    return blocks


def compute_blocks(compute: pd.DataFrame | None) -> list[Block]:
    """What the study used (iterations, wall time, GPU-hours) against what the fixed schedule would have cost.

    ``compute`` is ``aggregate.compute_used``: the fixed schedule of a converge run is its ``max_iters`` cap at
    the run's own measured seconds per iteration.
    """
    if compute is None or compute.empty:
        return []
    conv = compute[compute["budget"] == "converge"]
    text = (f"{len(conv)} of {len(compute)} runs trained on the converge budget; each stopped where its dev "
            "curve converged or at max_iters. The fixed schedule is max_iters for every converge run, costed at "
            "the run's own measured seconds per iteration; a run on a fixed budget used its fixed schedule. "
            "Train wall time is the training loop's, so it includes the periodic validation on the dev split; "
            "the final evaluations and the cost measurement after training are not counted.")
    return [Heading(2, "Compute used vs the fixed schedule"), Para(text), compute_table(compute)]


# --------------------------------------------------------------------------------------------- main
def _write_tables(study_dir: Path, results: pd.DataFrame, per_class: pd.DataFrame,
                  summary: pd.DataFrame) -> None:
    atomic_write_text(study_dir / "results.csv", results.to_csv(index=False))
    buf = io.BytesIO()
    results.to_parquet(buf, index=False)
    atomic_write_bytes(study_dir / "results.parquet", buf.getvalue())
    atomic_write_text(study_dir / "per_class.csv", per_class.to_csv(index=False))
    atomic_write_text(study_dir / "summary.csv", summary.to_csv(index=False))


def _write_insight_tables(study_dir: Path, ins: Insights | None) -> None:
    if ins is None:
        return
    atomic_write_text(study_dir / "label_efficiency.csv", ins.efficiency.to_csv(index=False))
    atomic_write_text(study_dir / "ranking_settings.csv", ins.stability.settings.to_csv(index=False))
    atomic_write_text(study_dir / "ranking_tau.csv", ins.stability.pairs.to_csv(index=False))


def _timed_on(results) -> str:
    """Where the latencies were measured, as the per-seed table says per run (device, precision)."""
    settings = sorted({tables.latency_setting(r) for _, r in results.iterrows()} - {tables.DASH}) \
        if not results.empty else []
    return f" (latency timed on {'; '.join(settings)})" if settings else ""


def _figures(study_dir: Path, results, summary, per_class, histories) -> list[Image]:
    d = study_dir / "plots"
    best = plots.best_runs(results) if not results.empty else results
    confusions = aggregate.collect_confusions(study_dir, list(zip(best.get("run_id", []),
                                                                  best.get("eval_dataset", []), strict=True)))
    return [
        Image("mIoU vs labelled fraction", plots.plot_miou_vs_fraction(summary, d / "miou_vs_fraction.png"),
              "Mean over seeds; error bars = std; log x axis. Stars: where a series reaches the baseline's "
              "mIoU at 100% (dotted line), horizontal bar = its 95% interval over training seeds (parametric bootstrap of the moderated cell means); a left triangle: "
              "reached already at the smallest fraction."),
        Image("Training loss", plots.plot_loss_curves(histories, d / "loss_curves.png"),
              "Mean over seeds; band = std."),
        Image("Epochs to converge", plots.plot_epochs_to_converge(summary, d / "epochs_to_converge.png"),
              "Mean over seeds; error bars = std; in-domain validation."),
        Image("mIoU vs inference cost", plots.plot_efficiency(summary, d / "efficiency.png"),
              "Largest fraction, in-domain evaluation; time and GFLOPs as measured by the engine"
              + _timed_on(results) + "."),
        Image("Cross-dataset matrix", plots.plot_cross_dataset(summary, d / "cross_dataset.png"),
              "Mean mIoU over seeds; cross-dataset cells are scored on the shared classes."),
        Image("Per-class IoU", plots.plot_per_class_iou(per_class, d / "per_class_iou.png"),
              "Mean over seeds; largest fraction, in-domain evaluation."),
        Image("Confusion matrices of the best runs", plots.plot_confusions(results, confusions,
                                                                           d / "confusion_best.png"),
              "Row-normalised (each ground-truth class sums to 1); the best in-domain run per encoder "
              "and regime."),
    ]


def write_report(study_dir: str | Path, n_boot: int = 2000, seed: int = 0) -> Path:
    """Aggregate the study's run directories and write every report file; returns the path of report.html."""
    study_dir = Path(study_dir)
    results = aggregate.collect_results(study_dir)  # raises FileNotFoundError for a missing study / runs dir
    meta = read_study_meta(study_dir)
    per_class = aggregate.collect_per_class(study_dir)
    histories = aggregate.collect_histories(study_dir)
    failures = aggregate.collect_failures(study_dir)
    incomplete = aggregate.collect_incomplete(study_dir)
    protocol = aggregate.collect_protocol(study_dir)
    base = {"baseline": meta["baseline"], "baseline_regime": meta["baseline_regime"]}
    summary = stats.summarize(results, **base, image_areas=aggregate.image_area_reader(study_dir), n_boot=n_boot,
                              seed=seed)
    summary = stats.add_convergence(summary, results, **base)
    summary, insights = compute_insights(results, summary, meta["baseline"], meta["baseline_regime"], n_boot, seed)
    _write_tables(study_dir, results, per_class, summary)
    _write_insight_tables(study_dir, insights)
    figures = _figures(study_dir, results, summary, per_class, histories)
    tau_image = None if insights is None else Image(
        "Kendall's tau between settings", plots.plot_rank_agreement(insights.stability.settings, insights.stability.pairs,
                                                        study_dir / "plots" / "rank_tau.png"),
        "Kendall's tau-b between the tie-aware encoder rankings of two settings; '–' where fewer than 2 encoders "
        "are shared or one setting ties them all.")
    blocks = build_blocks(study_dir, meta, results, summary, figures, failures, incomplete, protocol, n_boot,
                          insights, tau_image, compute=aggregate.compute_used(study_dir))
    blocks = relative_paths(blocks, study_dir)
    atomic_write_text(study_dir / "report.md", render_markdown(blocks, study_dir))
    return atomic_write_text(study_dir / "report.html", render_html(blocks))


def report_cli(study_dir: str | Path) -> int:
    """``encseg study report DIR``: write the report and print the path of report.html."""
    print(write_report(study_dir))
    return 0
