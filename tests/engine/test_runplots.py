import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from encseg.engine.runplots import normalize_confusion, plot_confusion, plot_losses, plot_val_curve

CSV = """step,epoch,time_s,lr,loss,loss_ce,loss_dice,val_miou,val_macc,val_aacc,val_loss
10,0,1,1e-4,3.0,1.0,2.0,,,,
20,0,2,1e-4,2.5,0.8,1.7,,,,
20,0,3,,,,,0.2,0.3,0.5,2.2
30,1,4,1e-4,2.0,0.6,1.4,,,,
40,1,5,1e-4,1.5,0.5,1.0,,,,
40,1,6,,,,,0.4,0.5,0.7,1.8
"""


def history() -> pd.DataFrame:
    return pd.read_csv(io.StringIO(CSV))


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # decodes the whole file: fails on a truncated PNG
        return im.size


def test_loss_and_val_plots_are_pngs(tmp_path: Path):
    assert png_size(plot_losses(history(), tmp_path / "plots" / "loss.png"))[0] > 300
    assert png_size(plot_val_curve(history(), tmp_path / "plots" / "val_miou.png"))[0] > 300
    assert png_size(plot_val_curve(history(), tmp_path / "val_epoch.png", x="epoch"))[0] > 300
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["loss.png", "val_miou.png"]  # no temp files


def test_plots_without_validation_or_loss_rows_still_render(tmp_path: Path):
    h = history()
    train_only = h[h["val_miou"].isna()].drop(columns=["val_miou", "val_loss"])
    png_size(plot_val_curve(train_only, tmp_path / "v.png"))
    png_size(plot_losses(h[["step", "epoch"]], tmp_path / "l.png"))
    with pytest.raises(ValueError, match="'step'"):
        plot_losses(h.drop(columns=["step"]), tmp_path / "x.png")


def test_confusion_plot_small_with_cell_text_and_names(tmp_path: Path):
    cm = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    png_size(plot_confusion(cm, ["road", "car", "sky"], tmp_path / "c.png"))
    with pytest.raises(ValueError, match="2 class names"):
        plot_confusion(cm, ["a", "b"], tmp_path / "bad.png")


def test_confusion_plot_150_classes(tmp_path: Path):
    rng = np.random.default_rng(0)
    n = 150
    cm = rng.integers(0, 5, (n, n)) + np.diag(rng.integers(50, 200, n))
    cm[7] = 0  # a class absent from the ground truth
    w, h = png_size(plot_confusion(cm, [f"class_{i}" for i in range(n)], tmp_path / "c150.png"))
    assert w > 1500 and h > 1500


def test_row_normalisation():
    cm = np.array([[3, 1], [0, 0]])
    norm = normalize_confusion(cm, "true")
    np.testing.assert_allclose(norm[0], [0.75, 0.25])
    assert np.isnan(norm[1]).all()
    np.testing.assert_allclose(normalize_confusion(cm, "all"), cm / 4)
    with pytest.raises(ValueError, match="normalize"):
        normalize_confusion(cm, "rows")
