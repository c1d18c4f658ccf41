"""A Ray head on this machine, for ``ray job submit`` and the Airflow operators: ``ray start --head
--block`` on loopback with token authentication (Ray 2.60's job API requires it), in its own process
group, so that stopping it stops exactly this cluster. `make airflow` and the test suite start theirs
here; production clusters are started by their own tooling (see infra/)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LocalRayHead:
    process: subprocess.Popen
    address: str  # the dashboard, where the job API answers
    token: str
    log: Path
    temp_dir: Path

    def jobs(self) -> list[dict[str, Any]]:
        """The cluster's jobs, from the job API."""
        request = urllib.request.Request(f"{self.address}/api/jobs/", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def stop(self) -> None:
        stop_process_group(self.process)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_head(*, token: str, dashboard_port: int, log: Path, extra_args: Sequence[str] = (),
               timeout_s: float = 180) -> LocalRayHead:
    """Start a head and wait until its job API answers. Its environment is this process's, plus token
    auth and this interpreter's bin folder first on PATH (so jobs find this venv's ``albert-batch``).
    Raises RuntimeError with the end of ``log`` when the head does not come up."""
    bin_dir = Path(sys.executable).parent
    temp_dir = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}",
             *extra_args],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    head = LocalRayHead(process, f"http://127.0.0.1:{dashboard_port}", token, log, temp_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            head.jobs()
            return head
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                head.stop()
                raise RuntimeError(f"the Ray head did not come up; the end of {log}:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}") from None
            time.sleep(1)


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group ``process`` leads (started with ``start_new_session``), SIGKILL after 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
