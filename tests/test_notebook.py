"""notebooks/colab.ipynb runs end to end (offline, small) and links to the repository named in pyproject.toml."""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "colab.ipynb"


def _repository() -> str:
    # a regex, not tomllib: Python 3.10 has no TOML reader
    found = re.search(r'^Repository = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert found, "pyproject.toml: [project.urls] Repository is missing"
    return found.group(1)


def test_colab_links_and_install_url_follow_pyproject():
    repo = _repository()
    owner_name = repo.removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{owner_name}/blob/main/notebooks/colab.ipynb"
    assert colab in (ROOT / "README.md").read_text()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert colab in text
    assert re.search(rf'REPO_URL = "{re.escape(repo)}"', text)


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
