"""Ray on this machine, for ``ray job submit``, the Airflow operators and the tests: a head (``ray start
--head --block`` on loopback with token authentication, which Ray 2.60's job API requires) and, for
trying node loss, worker nodes that join it. Each runs in its own process group, so that stopping it
stops exactly that node, and listens only on ports it finds free, so that several clusters (and an
embedded run's Ray) coexist on one machine. `make airflow` and the test suite start theirs here;
production clusters are started by their own tooling (see infra/)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_ports() -> list[str]:
    """``ray start`` flags for the ports a node listens on that Ray would otherwise take at fixed numbers
    (the dashboard agent's 52365, the client server's 10001), so that it never collides with another Ray."""
    return ["--dashboard-agent-listen-port=0", f"--ray-client-server-port={free_port()}",
            "--min-worker-port=0", "--max-worker-port=0"]


@dataclass(frozen=True)
class LocalRayNode:
    process: subprocess.Popen
    log: Path
    temp_dir: Path

    def stop(self, *, crash: bool = False) -> None:
        """Stop the node; ``crash`` kills it at once (SIGKILL), as a lost machine would go."""
        stop_process_group(self.process, sig=signal.SIGKILL if crash else signal.SIGTERM)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@dataclass(frozen=True)
class LocalRayHead(LocalRayNode):
    address: str  # the dashboard, where the job API answers
    gcs_address: str  # where nodes and drivers join: host:port
    token: str
    env: dict[str, str]  # what the head's environment adds to this process's

    def get(self, path: str) -> Any:
        """A GET of the dashboard's REST API (the job API, the state API), with the cluster's token."""
        request = urllib.request.Request(f"{self.address}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def jobs(self) -> list[dict[str, Any]]:
        """The cluster's jobs, from the job API."""
        return self.get("/api/jobs/")

    def environment(self) -> dict[str, str]:
        """The environment of the head and its nodes, which a process joining the cluster needs too."""
        return _environment(self.token, self.env)

    def add_node(self, *, log: Path, resources: Mapping[str, float] | None = None, num_cpus: float = 1,
                 timeout_s: float = 120) -> LocalRayNode:
        """Start a worker node that joins this head, with custom ``resources``; return once it has joined."""
        temp_dir = Path(tempfile.mkdtemp(prefix="rn-", dir="/tmp"))
        before = {n["node_id"] for n in self._alive_nodes()}
        args = [f"--address={self.gcs_address}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
                "--node-ip-address=127.0.0.1", *node_ports()]
        if resources:
            args.append(f"--resources={json.dumps(dict(resources))}")
        node = LocalRayNode(_ray_start(args, self.token, log, self.env), log, temp_dir)
        _wait(lambda: any(n["node_id"] not in before for n in self._alive_nodes()), node, log, timeout_s,
              "the worker node did not join")
        return node

    def _alive_nodes(self) -> list[dict[str, Any]]:
        nodes = self.get("/api/v0/nodes?limit=1000&detail=1")["data"]["result"]["result"]
        return [n for n in nodes if n.get("state") == "ALIVE"]


def start_head(*, token: str, log: Path, dashboard_port: int | None = None, extra_args: Sequence[str] = (),
               env: Mapping[str, str] | None = None, timeout_s: float = 180) -> LocalRayHead:
    """Start a head on free ports (``dashboard_port`` if given) and wait until its job API answers. Its
    environment is this process's plus ``env``, token auth and this interpreter's bin folder first on PATH
    (so jobs find this venv's ``albert-batch``); its nodes share it. Raises RuntimeError with the end of
    ``log`` when it does not come up."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    dashboard_port = dashboard_port or free_port()
    gcs_port = free_port()
    process = _ray_start(["--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                          f"--port={gcs_port}", f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}",
                          *node_ports(), *extra_args], token, log, env)
    head = LocalRayHead(process, log, temp_dir, f"http://127.0.0.1:{dashboard_port}", f"127.0.0.1:{gcs_port}", token,
                        dict(env or {}))

    def answers() -> bool:
        head.jobs()
        return bool(head._alive_nodes())  # the job API answers a moment before the head counts as a node

    _wait(answers, head, log, timeout_s, "the Ray head did not come up")
    return head


def _environment(token: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    return {**os.environ, **(env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def _ray_start(args: Sequence[str], token: str, log: Path, env: Mapping[str, str] | None) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--block", *args],
                                env=_environment(token, env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(ready: Any, node: LocalRayNode, log: Path, timeout_s: float, failure: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except OSError:
            pass
        if node.process.poll() is not None or time.monotonic() > deadline:
            node.stop()
            raise RuntimeError(f"{failure}; the end of {log}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(1)


def stop_process_group(process: subprocess.Popen, *, sig: int = signal.SIGTERM) -> None:
    """``sig`` to the process group ``process`` leads (started with ``start_new_session``), SIGKILL after 10 s:
    a `ray start --block` asked to stop can linger for half a minute, and its processes hold nothing to save."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
