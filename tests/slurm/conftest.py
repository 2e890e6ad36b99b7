"""A one-node SLURM cluster for the tests marked ``slurm`` (started by ``scripts/slurm_local.sh``).

A cluster that already answers (``.ci/run`` starts one; so does ``sudo scripts/slurm_local.sh up``) is used as
it is. Otherwise, when SLURM is installed and the tests run as root, the fixture starts one and stops it at the
end. Else the tests are skipped with the reason, or fail when ``ENCSEG_REQUIRE_SLURM=1`` (CI).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm_local.sh"


def _script(action: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action], capture_output=True, text=True, timeout=timeout)


def _start() -> str | None:
    """Start a cluster; None when it runs, else why not."""
    if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
        return "slurm-wlm is not installed"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd needs root"
    proc = _script("start")
    if proc.returncode != 0:
        return f"scripts/slurm_local.sh start failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-800:]}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    started = False
    # pytest-xdist workers share the machine's one cluster: the first one starts it
    with open(tmp_path_factory.getbasetemp().parent / "slurm_start.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if _script("status").returncode != 0:
            why = _start()
            if why is not None:
                hint = "start one with `sudo scripts/slurm_local.sh up`"
                if os.environ.get("ENCSEG_REQUIRE_SLURM") == "1":
                    pytest.fail(f"SLURM cluster required (ENCSEG_REQUIRE_SLURM=1) but: {why}; {hint}")
                pytest.skip(f"no SLURM cluster: {why}; {hint}")
            started = True
    yield
    if started:
        _script("stop")
