"""What a run leaves behind once training stops: exported model, eval files, cost, dynamics, plots.

Runs on rank 0 only. The exported and scored weights are ``eval.checkpoint``: the final weights by default,
or the best on the dev split (held out of the train split, never the reported split). The reported splits are
scored here, once, and the latency is measured, under the precision the run trained with
(``engine.precision``; recorded as ``precision`` in the summary and in each eval file's protocol).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
import torch

from encseg.atomic import atomic_write_json, read_json
from encseg.config import RunConfig
from encseg.data.taxonomy import cross_dataset_luts, dataset_taxonomy
from encseg.engine import convergence as crit
from encseg.engine import precision as prec
from encseg.engine.dynamics import curve_summary, validation_rows
from encseg.engine.efficiency import count_flops, count_params, measure_latency
from encseg.engine.evaluate import EvalResult, evaluate, protocol, write_eval
from encseg.engine.loaders import eval_dataset, eval_loader
from encseg.engine.metrics import validation_record
from encseg.engine.rundir import RunDir
from encseg.engine.runplots import plot_confusion, plot_losses, plot_val_curve


def _load_best(module, best_path: Path) -> str:
    if best_path and best_path.is_file():
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        return str(best_path.name)
    return "last (no best checkpoint was saved)"


def _close_dev_curve(cfg: RunConfig, history, seg, dev_ds, step: int, classes: list[str], device) -> None:
    """A dev validation of the final weights when the schedule did not end on one (the curve ends where the
    run ends); taken before any checkpoint is loaded."""
    last_val = [r for r in history.rows if "val_miou" in r]
    if dev_ds is None or (last_val and last_val[-1]["step"] == step):
        return
    m = evaluate(seg, eval_loader(dev_ds, cfg.data.eval_batch_size, cfg.data.num_workers), cfg.eval,
                 cfg.data.crop_size, classes, dataset="dev", split=cfg.data.dataset.train_split, device=device,
                 precision=run_precision(cfg, device)).metrics
    history.add_validation(step, validation_record(m))
    history.write()


def run_precision(cfg: RunConfig, device) -> str:
    """The precision the run trained with on ``device``: its evaluation and latency use it too."""
    return prec.resolve(cfg.train.precision, torch.device(device).type)


def convergence_record(cfg: RunConfig, state: crit.State | None, hist: pd.DataFrame | None, steps: int,
                       steps_per_epoch: int, wall_s: float) -> dict:
    """The summary's convergence fields: the live criterion's state under ``budget: converge``, else the same
    criterion replayed on the recorded dev curve (did the fixed schedule reach a plateau?)."""
    t = cfg.train
    val_every = t.val_every * steps_per_epoch if t.budget == "epochs" else t.val_every
    cap = t.max_epochs * steps_per_epoch if t.budget == "epochs" else t.max_iters
    criterion = crit.Criterion.from_config(t, val_every=val_every)
    if state is None:
        val = validation_rows(hist) if hist is not None else pd.DataFrame()
        points = [(int(r.step), r.val_miou, getattr(r, "val_loss", math.nan)) for r in val.itertuples()]
        state = crit.replay(points, criterion)
    out = crit.record(state, criterion, t.budget, steps, steps_per_epoch, wall_s, cap)
    at = None
    if state.fired_at is not None and hist is not None:
        rows = validation_rows(hist)
        hit = rows[rows["step"] == state.fired_at]
        at = float(hit["time_s"].iloc[-1]) if len(hit) and "time_s" in hit else None
    return {**out, "steps_to_converge": state.fired_at, "time_to_converge_s": at}


def finalize_run(cfg: RunConfig, rd: RunDir, trainer, module, history, classes: list[str], val_ds, t0: float,
                 best_path: Path, dev_ds=None, converge_state: crit.State | None = None) -> dict:
    """The named steps after training, in order; returns the summary written to ``summary.json``."""
    train_time = history.elapsed()
    device = module.device if module.device.type != "meta" else torch.device("cpu")
    _close_dev_curve(cfg, history, module.segmenter.eval(), dev_ds, trainer.global_step, classes, device)
    weights = select_weights(cfg, module, best_path)
    seg = module.segmenter
    seg.eval()
    export_model(cfg, rd, seg, classes, weights)
    main = evaluate_own_split(cfg, rd, seg, classes, val_ds, device)
    if dev_ds is None:  # no dev split: the validation split is the curve
        record_final_validation(history, trainer.global_step, main.metrics)
    evaluate_other_datasets(cfg, rd, seg, classes, device)
    cost = measure_cost(cfg, seg, device)
    dyn, hist = training_dynamics(cfg, rd, history.steps_per_epoch)
    times = {"train_time_s": train_time, "wall_time_s": time.time() - t0}
    summary = run_summary(cfg, rd, trainer.global_step, history.steps_per_epoch, times, weights, main.metrics,
                          cost, dyn)
    summary.update(convergence_record(cfg, converge_state, hist, trainer.global_step, history.steps_per_epoch,
                                      train_time))
    summary["dev_images"] = len(dev_ds) if dev_ds is not None else 0
    atomic_write_json(rd.summary_path, summary)
    return summary


def select_weights(cfg: RunConfig, module, best_path: Path) -> str:
    """Load ``eval.checkpoint``'s weights into ``module``; returns what was loaded, for the record."""
    if cfg.eval.checkpoint == "best":
        return _load_best(module, best_path)
    return "last"


def export_model(cfg: RunConfig, rd: RunDir, seg, classes: list[str], weights: str) -> None:
    """``model.safetensors`` + ``model.json``: the weights and what is needed to use them without the run."""
    from encseg.models.segmenter import save_segmenter

    enc = seg.encoder
    save_segmenter(seg, rd.path, extra={
        "classes": classes, "dataset": cfg.data.dataset.display_name, "format": cfg.data.dataset.format,
        "taxonomy": dataset_taxonomy(cfg.data.dataset), "mean": list(enc.mean), "std": list(enc.std),
        "crop_size": cfg.data.crop_size, "eval_size": cfg.data.eval_size, "weights": weights,
        "encoder_load": getattr(getattr(enc, "load_report", None), "as_dict", lambda: None)(),
    })


def evaluate_own_split(cfg: RunConfig, rd: RunDir, seg, classes: list[str], val_ds, device) -> EvalResult:
    """The run's own validation split: ``eval/<dataset>.json``, its confusion matrix and plot."""
    name = cfg.data.dataset.display_name
    loader = eval_loader(val_ds, cfg.data.eval_batch_size, cfg.data.num_workers)
    precision = run_precision(cfg, device)
    main = evaluate(seg, loader, cfg.eval, cfg.data.crop_size, classes, dataset=name,
                    split=cfg.data.dataset.val_split, device=device, precision=precision)
    write_eval(rd, main, protocol(cfg.eval, cfg.data, precision))
    plot_confusion(main.confusion, classes, rd.plots_dir / f"confusion_{name}.png")
    return main


def record_final_validation(history, step: int, metrics: dict) -> None:
    """End the validation curve at the final step when the last scheduled validation came earlier."""
    last_val = [r for r in history.rows if "val_miou" in r]
    if last_val and last_val[-1]["step"] == step:
        return
    history.add_validation(step, validation_record(metrics))
    history.write()


def evaluate_other_datasets(cfg: RunConfig, rd: RunDir, seg, classes: list[str], device) -> None:
    """``eval.datasets``: each scored in the label space it shares with the training dataset."""
    precision = run_precision(cfg, device)
    proto = protocol(cfg.eval, cfg.data, precision)
    for ds_cfg in cfg.eval.datasets:
        ds = eval_dataset(ds_cfg, cfg.data, seg.encoder.mean, seg.encoder.std)
        lut_p, lut_g, names, cross = cross_dataset_luts(cfg.data.dataset, ds_cfg, classes, ds.dataset.classes)
        res = evaluate(seg, eval_loader(ds, cfg.data.eval_batch_size, cfg.data.num_workers), cfg.eval,
                       cfg.data.crop_size, names, dataset=ds_cfg.display_name, split=ds_cfg.val_split,
                       device=device, lut_pred=lut_p, lut_gt=lut_g, precision=precision)
        res.cross = cross
        write_eval(rd, res, proto)
        plot_confusion(res.confusion, res.classes, rd.plots_dir / f"confusion_{ds_cfg.display_name}.png")


def measure_cost(cfg: RunConfig, seg, device) -> dict:
    """Parameters, FLOPs and latency at the training crop, one image, under the run's precision (a FLOP count does
    not depend on it; a bf16-true model needs the autocast to take fp32 inputs at all)."""
    size = cfg.data.crop_size
    x = torch.zeros(1, 3, size, size, device=device)
    params = count_params(seg, {k: m for k, m in (("encoder", seg.encoder), ("neck", seg.neck),
                                                   ("head", seg.head)) if m is not None})
    precision = run_precision(cfg, device)

    def infer(inp):
        with prec.autocast(precision, device):
            return seg.inference(inp, mode="whole")

    with torch.no_grad():
        flops = count_flops(infer, x)
        latency = measure_latency(infer, lambda: x, iters=cfg.eval.latency_iters, warmup=2,
                                  device=device) if cfg.eval.latency_iters > 0 else {}
    if latency:
        latency["precision"] = precision
    return {"params": params, "flops": flops, "size": size, "latency": latency, "precision": precision}


def training_dynamics(cfg: RunConfig, rd: RunDir, steps_per_epoch: int) -> tuple[dict, pd.DataFrame | None]:
    """Convergence figures from ``history.csv`` (and the table itself) and the loss / validation plots."""
    if not rd.history_path.is_file():
        return {}, None
    hist = pd.read_csv(rd.history_path)
    dyn = curve_summary(hist, target=cfg.eval.converge_target, steps_per_epoch=steps_per_epoch)
    plot_losses(hist, rd.plots_dir / "loss.png")
    plot_val_curve(hist, rd.plots_dir / "val_miou.png")
    return dyn, hist


def run_summary(cfg: RunConfig, rd: RunDir, step: int, steps_per_epoch: int, times: dict, weights: str,
                metrics: dict, cost: dict, dyn: dict) -> dict:
    """The run's one-row record, ``summary.json``."""
    subset = rd.path / "subset.json"
    n_images = read_json(subset).get("num_images") if subset.is_file() else None
    params, latency, size = cost["params"], cost["latency"], cost["size"]
    return {
        "run_id": rd.path.name, "encoder": cfg.tags.get("encoder", cfg.model.encoder.name),
        "encoder_name": cfg.model.encoder.name, "encoder_weights": cfg.model.encoder.weights,
        "regime": cfg.model.regime.label, "head": cfg.model.head.type,
        "train_dataset": cfg.data.dataset.display_name, "fraction": cfg.data.fraction, "seed": cfg.seed,
        "subset_seed": cfg.data.subset_seed, "num_train_images": n_images, "steps": step,
        "epochs": step / max(1, steps_per_epoch), **times, "exported_weights": weights,
        "miou": metrics["miou"], "macc": metrics["macc"], "aacc": metrics["aacc"], "fwiou": metrics["fwiou"],
        "time_to_target_s": dyn.get("time_to_target_s"), "best_val_miou": dyn.get("best_miou"),
        "params_total": params.get("total"), "params_trainable": params.get("trainable"),
        "params_encoder": params.get("encoder"), "params_neck": params.get("neck"), "params_head": params.get("head"),
        "gflops": cost["flops"] / 1e9, "flops_input": [1, 3, size, size],
        "infer_ms_per_image": latency.get("ms_per_image"), "infer_p90_ms": latency.get("p90_ms"),
        "images_per_s": latency.get("images_per_s"), "peak_mem_mb": latency.get("peak_mem_mb"),
        "latency_device": latency.get("device"), "latency_precision": latency.get("precision"),
        "precision": cost.get("precision"),
    }

