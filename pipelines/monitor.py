"""`make monitor`: `make demo`'s run, watched by a local Prometheus — a Ray head that exports its metrics
(``ray start --metrics-export-port``, reported every five seconds), a Prometheus that scrapes it every five
seconds and evaluates the alert rules of infra/prometheus/alerts.yml, and the demo run on that head.

Prometheus is Debian's ``prometheus`` package: where it is missing and this user may install packages
(root, or passwordless sudo), it is installed with apt-get, and the service the package starts is stopped
again. promtool, where present, checks the rules first. Its configuration, data and logs, and the head's
log, live under .demo/monitor/.

Once the run is over it prints the Prometheus URL, queries to paste and a graph link, and keeps Prometheus
and the head running until Ctrl-C. With ``--screenshot FILE``, a headless Chromium saves the graph page to
FILE instead, and both stop.
"""

from __future__ import annotations

import argparse
import math
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from albert_batch.dev.local_ray import LocalRayHead, free_port, start_head, stop_process_group
from albert_batch.errors import Stopped

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / ".demo" / "monitor"
RULES = REPO / "infra" / "prometheus" / "alerts.yml"
SCRAPE_S = 5
# Smaller model batches and staged files than a run's defaults (4096 and 100000 rows), so that the counters
# grow every few seconds rather than once per corpus.
RESOURCES = {"batch_size": 200, "rows_per_file": 1000}
CONFIG = """\
# Written by `make monitor`: scrape the local Ray head's metrics export port.
global: {{scrape_interval: {s}s, evaluation_interval: {s}s}}
rule_files: ["{rules}"]
scrape_configs:
  - job_name: ray-head
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
"""
QUERIES = {
    "rows processed per second, by task": "sum by (task) (rate(ray_albert_batch_rows_processed_total[1m]))",
    "rows staged, per run": "sum by (run_id) (ray_albert_batch_rows_staged_total)",
    "rejects by reason": "sum by (reason) (ray_albert_batch_rows_rejected_total)",
    "forward-pass p95 seconds, by task": "histogram_quantile(0.95, sum by (task, le) "
                                         "(rate(ray_albert_batch_forward_seconds_bucket[1m])))",
}
GRAPHED = ("rows processed per second, by task", "rows staged, per run")
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def service_pids() -> set[int]:
    """Processes of Debian's prometheus service: a ``prometheus`` run as the package's own user."""
    try:
        uid = pwd.getpwnam("prometheus").pw_uid
    except KeyError:
        return set()
    pids = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() == "prometheus" and proc.stat().st_uid == uid:
                pids.add(int(proc.name))
        except OSError:
            continue
    return pids


def find_prometheus() -> str:
    """``prometheus`` on PATH; else Debian's package, installed where this user may, its service stopped."""
    if found := shutil.which("prometheus"):
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    allowed = not sudo or (shutil.which("sudo") and subprocess.run([*sudo, "true"], capture_output=True).returncode == 0)
    if not (allowed and shutil.which("apt-get")):
        sys.exit("monitor: Prometheus is not installed: run `sudo apt-get install -y prometheus` (Debian, Ubuntu), "
                 "or put a prometheus binary on PATH; then `make monitor` again")
    apt = [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    install = [*apt, "install", "-y", "--no-install-recommends", "prometheus"]
    print(f"monitor: Prometheus is missing; installing Debian's package: {' '.join(install)} (the service it "
          "starts is stopped again: only this script's Prometheus runs)", flush=True)
    before = service_pids()
    if subprocess.run(install).returncode and (subprocess.run([*apt, "update"]).returncode
                                               or subprocess.run(install).returncode):
        sys.exit("monitor: installing prometheus failed (see above)")
    if started := service_pids() - before:
        stop = ["service", "prometheus", "stop"] if shutil.which("service") else ["/etc/init.d/prometheus", "stop"]
        subprocess.run([*sudo, *stop], check=False)
        deadline = time.monotonic() + 15
        while (left := started & service_pids()) and time.monotonic() < deadline:
            time.sleep(0.5)
        if left:  # still there: the processes the package started, and only those
            subprocess.run([*sudo, "kill", *map(str, left)], check=False)
    return shutil.which("prometheus") or "/usr/bin/prometheus"


def listen_port(preferred: int) -> int:
    """``preferred`` where it is free, else any free port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def start_prometheus(binary: str, metrics_port: int) -> tuple[subprocess.Popen, str]:
    """Prometheus scraping the head, its data fresh under HERE; returns once it answers ``/-/ready``."""
    config, data, log = HERE / "prometheus.yml", HERE / "prometheus-data", HERE / "prometheus.log"
    config.write_text(CONFIG.format(s=SCRAPE_S, rules=RULES, port=metrics_port))
    shutil.rmtree(data, ignore_errors=True)
    url = f"http://127.0.0.1:{listen_port(9090)}"
    with open(log, "wb") as out:
        process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
                                    f"--web.listen-address={url.removeprefix('http://')}"],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=5):
                return process, url
        except OSError:
            time.sleep(0.5)
    stop_process_group(process)
    sys.exit(f"monitor: Prometheus did not come up; the end of {log}:\n{log.read_text(errors='replace')[-3000:]}")


def graph_url(base: str, time_range: str) -> str:
    """The graph page, one graph for each of GRAPHED over the last ``time_range`` (``15m``, ``90s``)."""
    panels = {}
    for i, name in enumerate(GRAPHED):
        panels |= {f"g{i}.expr": QUERIES[name], f"g{i}.tab": "0", f"g{i}.range_input": time_range}
    return f"{base}/graph?{urllib.parse.urlencode(panels)}"


def chromium() -> str:
    if found := next(filter(None, map(shutil.which, CHROMIUM)), None):
        return found
    sys.exit("monitor: --screenshot needs Chromium: `sudo apt-get install -y chromium`")


def screenshot(url: str, file: Path) -> None:
    """A headless Chromium's view of ``url``, its scripts given ten seconds (of virtual time) to draw."""
    file.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,1560", "--virtual-time-budget=10000", f"--screenshot={file.resolve()}", url],
                   check=True, capture_output=True, timeout=120)
    print(f"monitor: screenshot of {url}\n  saved to {file}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=12000,
                        help="documents in the demo corpus (default 12000: one to four minutes on two cores)")
    parser.add_argument("--screenshot", type=Path, metavar="FILE",
                        help="after the run, save a PNG of the graph page to FILE and stop (needs Chromium)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stops it as Ctrl-C does, Prometheus and the head included
    if args.screenshot:
        chromium()  # before the run, not after it
    binary = find_prometheus()
    if promtool := shutil.which("promtool"):
        check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
        if check.returncode:
            sys.exit(f"monitor: promtool check rules {RULES} failed:\n{check.stdout}{check.stderr}")
    HERE.mkdir(parents=True, exist_ok=True)
    head: LocalRayHead | None = None
    prometheus: subprocess.Popen | None = None
    try:
        metrics_port = free_port()
        try:
            head = start_head(token=secrets.token_hex(16), log=HERE / "ray-head.log",
                              extra_args=[f"--metrics-export-port={metrics_port}"],
                              env={"RAY_metrics_report_interval_ms": str(SCRAPE_S * 1000)})
        except RuntimeError as err:  # it did not come up: the end of its log says why
            sys.exit(f"monitor: {err}")
        prometheus, url = start_prometheus(binary, metrics_port)
        began = time.monotonic()
        print(f"monitor: Ray head {head.address} exports its metrics on 127.0.0.1:{metrics_port}; Prometheus {url} "
              f"scrapes them every {SCRAPE_S}s (logs and data: {HERE})", flush=True)
        # The demo's driver joins the head (ray.init reads RAY_ADDRESS) with its token, as its workers do.
        os.environ.update({**head.environment(), "RAY_ADDRESS": head.gcs_address})
        import ray

        from albert_batch.config import ResourceConfig
        from pipelines import demo

        status = demo.main(["--rows", str(args.rows)], resources=ResourceConfig(**RESOURCES))
        ray.shutdown()
        time.sleep(2 * SCRAPE_S)  # the last report, then a scrape of it
        seconds = math.ceil(time.monotonic() - began)
        minutes = max(15, math.ceil(seconds / 60))
        graph = graph_url(url, f"{minutes}m")
        print(f"\nPrometheus: {url}  (alerts: {url}/alerts; targets: {url}/targets)\nQueries to paste:")
        for name, query in QUERIES.items():
            print(f"  {name}:\n    {query}")
        print(f"The first two as graphs, over the last {minutes} minutes: {graph}")
        if args.screenshot:
            screenshot(graph_url(url, f"{seconds}s"), args.screenshot)  # from Prometheus's start to now
            return status
        print("Ctrl-C stops Prometheus and the Ray head.", flush=True)
        try:
            prometheus.wait()
        except KeyboardInterrupt:
            return 0
        print(f"monitor: Prometheus stopped by itself; see {HERE / 'prometheus.log'}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Stopped):
        print("\nmonitor: stopped before the run was over", flush=True)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the cleanup short
        if prometheus is not None:
            stop_process_group(prometheus)
        if head is not None:
            head.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
