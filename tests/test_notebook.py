"""notebooks/colab.ipynb runs end to end (offline, small) and names no repository address of its own."""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "colab.ipynb"


def _code(nb, start: str) -> str:
    return next(c.source for c in nb.cells if c.cell_type == "code" and c.source.startswith(start))


def test_no_repository_address_is_made_up_and_install_needs_one():
    # the project is cloned from wherever its users keep it: a written-in address would send them elsewhere
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for text in [(ROOT / "README.md").read_text(), (ROOT / "pyproject.toml").read_text(),
                 *(c.source for c in nb.cells)]:
        assert not re.search(r"(colab\.research\.google\.com/github|github\.com)/(?!<owner>)[\w.-]+/", text)
    params: dict = {}
    exec(_code(nb, "# Parameters"), params)
    assert params["REPO_URL"] is None
    install = _code(nb, "import importlib.util")
    with pytest.raises(RuntimeError, match="set REPO_URL"):
        exec(install, {**params, "INSTALL": True})


@pytest.mark.slow
def test_notebook_runs_offline_with_a_small_study(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits it: tiny models, shared CI cores
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    # what papermill does: a cell after the parameters cell overrides them
    nb.cells.insert(params + 1, nbformat.v4.new_code_cell(
        f"SMALL = True\nONLINE = False\nINSTALL = False\nWORK = {str(tmp_path / 'work')!r}"))
    t0 = time.monotonic()
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    wall = time.monotonic() - t0
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    assert any("image/png" in o.data for o in shown), "no plot shown inline"
    assert any("text/html" in o.data and "miou_mean" in o.data["text/html"] for o in shown), "no summary table"
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "offline: skipped the DINOv2 study" in printed
    assert (tmp_path / "work" / "study" / "report.html").is_file()
    print(f"notebook wall time: {wall:.0f} s")
