"""Small synthetic datasets written once per session in each real layout; tests that corrupt files copy them."""

import shutil
from pathlib import Path

import pytest

from encseg.data.synthetic import write_synthetic


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """``synth(layout)`` -> root of a 5-class, 64 px dataset (6 train, 3 val) in that layout (cached)."""
    cache: dict[str, Path] = {}

    def get(layout: str = "folder") -> Path:
        if layout not in cache:
            root = tmp_path_factory.mktemp(f"synth_{layout}")
            cache[layout] = write_synthetic(root / "ds", style="a", classes=5, train=6, val=3, size=64, seed=0,
                                            layout=layout)
        return cache[layout]

    return get


@pytest.fixture
def synth_copy(synth, tmp_path):
    """A private copy that a test may corrupt."""

    def get(layout: str = "folder") -> Path:
        dst = tmp_path / layout
        shutil.copytree(synth(layout), dst)
        return dst

    return get
