"""Ray on this machine, for ``ray job submit``, the Airflow operators and the tests: a head (``ray start
--head --block`` on loopback with token authentication, which Ray 2.60's job API requires), for trying
node loss and preemption, worker nodes that join it (and leave it through Ray's drain API), and a head
whose autoscaler adds worker nodes of the types it is given on this machine (Ray's fake node provider). Each runs in its own process group, so that stopping it
stops exactly that node, and listens only on ports it finds free, so that several clusters (and an
embedded run's Ray) coexist on one machine. `make airflow` and the test suite start theirs here;
production clusters are started by their own tooling (see infra/)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A port nothing listens on (on any address), for a server that binds it a moment later. It is drawn
    at random from below the kernel's ephemeral range (``ip_local_port_range``), from which the kernel hands
    out ports to every outgoing connection and every server binding port 0: a port found free there can be
    taken by anyone before its server binds it (a Ray head's client server, which binds seconds after the
    head starts, lost its port so while other clusters started beside it). Random: callers in other
    processes rarely draw the same one."""
    low = _ephemeral_low()
    draw = random.SystemRandom()  # not the seedable global generator: processes seeded alike would collide
    for _ in range(100):
        port = draw.randrange(OWN_PORTS_FROM, low) if low > OWN_PORTS_FROM + 1000 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError(f"no free port between {OWN_PORTS_FROM} and {low}")


OWN_PORTS_FROM = 10_000  # below: well-known and registered services' ports


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0  # unknown: take what the kernel gives for port 0


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
    node_id: str = field(default="", kw_only=True)  # Ray's id of the node (hex), for a worker node

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
        before = {n["node_id"] for n in self._alive_nodes()}
        for attempt in range(STARTS):  # each try on its own folder and ports: a failed one's are torn down
            temp_dir = Path(tempfile.mkdtemp(prefix="rn-", dir="/tmp"))
            args = [f"--address={self.gcs_address}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
                    "--node-ip-address=127.0.0.1", *node_ports()]
            if resources:
                args.append(f"--resources={json.dumps(dict(resources))}")
            node = LocalRayNode(_ray_start(args, self.token, log, self.env), log, temp_dir)
            try:
                _wait(lambda: any(n["node_id"] not in before for n in self._alive_nodes()), node, log, timeout_s,
                      "the worker node did not join")
                break
            except RuntimeError as err:  # `ray start` gives a raylet 30 s to register, which a busy host can take
                if attempt == STARTS - 1 or "timed out during startup" not in str(err):
                    raise
        joined = next(n["node_id"] for n in self._alive_nodes() if n["node_id"] not in before)
        return dataclasses.replace(node, node_id=joined)

    def drain(self, node_id: str, *, deadline_s: float, reason: str = "DRAIN_NODE_REASON_PREEMPTION",
              message: str = "the spot instance is reclaimed") -> None:
        """Ask Ray to drain a node as a spot notice or KubeRay does (``ray drain-node``): it takes no new work,
        and is expected gone ``deadline_s`` seconds from now."""
        subprocess.run([str(Path(sys.executable).parent / "ray"), "drain-node", f"--address={self.gcs_address}",
                        f"--node-id={node_id}", f"--reason={reason}", f"--reason-message={message}",
                        f"--deadline-remaining-seconds={int(deadline_s)}"],
                       env=self.environment(), check=True, capture_output=True, text=True)

    def _alive_nodes(self) -> list[dict[str, Any]]:
        nodes = self.get("/api/v0/nodes?limit=1000&detail=1")["data"]["result"]["result"]
        return [n for n in nodes if n.get("state") == "ALIVE"]


STARTS = 3  # tries to start a worker node whose raylet did not register in time


def start_head(*, token: str, log: Path, dashboard_port: int | None = None, gcs_port: int | None = None,
               extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
               timeout_s: float = 180) -> LocalRayHead:
    """Start a head on free ports (``dashboard_port`` and ``gcs_port`` if given) and wait until its job API answers. Its
    environment is this process's plus ``env``, token auth and this interpreter's bin folder first on PATH
    (so jobs find this venv's ``albert-batch``); its nodes share it. Raises RuntimeError with the end of
    ``log`` when it does not come up."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    dashboard_port = dashboard_port or free_port()
    gcs_port = gcs_port or free_port()
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


def start_autoscaling_head(*, token: str, log: Path, head_cpus: float, worker_types: Mapping[str, Mapping[str, float]],
                           max_workers: int, env: Mapping[str, str] | None = None) -> LocalRayHead:
    """A head of ``head_cpus`` CPUs whose autoscaler (Ray's own, with the fake node provider Ray's tests use)
    starts worker nodes of ``worker_types`` (name -> resources, CPUs included, none at the start, at most
    ``max_workers`` in all) on this machine when work asks for them, and stops them when idle. The nodes are
    processes of the head's group: stopping the head stops them."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ra-", dir="/tmp"))
    gcs_port = free_port()
    nodes = {"ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
             **{name: {"resources": dict(resources), "node_config": {}, "min_workers": 0, "max_workers": max_workers}
                for name, resources in worker_types.items()}}
    config = {"cluster_name": f"local-{gcs_port}", "max_workers": max_workers, "available_node_types": nodes,
              "head_node_type": "ray.head.default", "upscaling_speed": 1.0, "idle_timeout_minutes": 0.5,
              "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{gcs_port}", "use_node_id_as_ip": True,
                           "disable_node_updaters": True, "disable_launch_config_check": True},
              "auth": {"ssh_user": "ray"}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
              "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
              "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
              "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": []}
    path = temp_dir / "autoscaling.json"
    path.write_text(json.dumps(config))
    return start_head(token=token, log=log, gcs_port=gcs_port,
                      extra_args=[f"--num-cpus={head_cpus}", f"--autoscaling-config={path}"],
                      env={**(env or {}), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})


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
