"""Where a run executes: joining a Ray cluster or starting an embedded one, whether the cluster can host
the run's model actors (or grow until it can), turning a Ray worker's error back into the error the worker
raised, and the package versions recorded with results."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import socket
import time
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from albert_batch import errors as errors_module
from albert_batch.errors import AlbertBatchError, ConfigError, NodeLost, RayUnavailable

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("albert-batch", "ray", "transformers", "torch", "tokenizers", "pyarrow")


def connect_ray(address: str | None) -> bool:
    """Join ``address`` (``auto`` or ``host:port``), or — when absent and no ``RAY_ADDRESS`` is set, as it is
    inside ``ray job submit`` — start an embedded local Ray. Returns True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    joining = address or os.environ.get("RAY_ADDRESS")
    try:
        if joining:
            _check_answers(joining)
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)  # None: RAY_ADDRESS
        else:
            start_embedded_ray()
    except BaseException as err:
        if ray.is_initialized():  # stopped (a signal) or failed half-way: leave nothing of it running
            ray.shutdown()
        if not isinstance(err, (ConnectionError, TimeoutError, RuntimeError)):
            raise
        where = f"the Ray cluster at {joining}" if joining else "an embedded local Ray"
        raise RayUnavailable(f"cannot start or join {where}: {type(err).__name__}: {err}") from err
    return True


def _check_answers(address: str) -> None:
    """A ``host:port`` that refuses connections fails at once: Ray itself would keep trying for minutes."""
    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise ConnectionError(f"nothing answers at {address} ({err.strerror or err})") from err


def start_embedded_ray(**init_args: Any) -> None:
    """``ray.init`` of a local Ray for this process alone, listening only on free ports, with no more
    processes than one run needs. ray.init has no setting for its dashboard agent's HTTP port, and the fixed
    default (52365) would keep a ``ray start`` head started later on this machine from taking job
    submissions; port 0 lets the agent pick a free one. A single-node Ray with no node provider has nothing
    for an autoscaler to do, so its monitor is not started; nor, where no worker's output is sent to the
    driver (``log_to_driver=False``), the log monitor that would send it (each costs a Python process's
    start and polls while the run lasts). Nor its API server: without the dashboard (``include_dashboard``
    False) Ray still starts that process, to serve nothing (no HTTP, no job or state API) but its usage
    statistics, and ray.init waits for it before it starts the raylet: 1.5 s of a start-up on two cores
    (BENCHMARKS.md, "Start-up"). Metrics are the dashboard agent's, which runs. (Ray 2.60.x;
    ``pyproject.toml`` pins it, and tests check the port and the processes.)"""
    import ray
    from ray._private import node, parameter

    ray_params, start_api_server = parameter.RayParams, node.Node.start_api_server
    settings = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True, **init_args}
    lean = {"dashboard_agent_listen_port": 0, "no_monitor": True, "include_log_monitor": settings["log_to_driver"]}

    class Embedded(ray_params):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**lean, **kwargs})

    def no_api_server(self: Any, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
        if include_dashboard:  # asked for by the caller: Ray's own start
            start_api_server(self, include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)

    parameter.RayParams, node.Node.start_api_server = Embedded, no_api_server
    try:
        ray.init(**settings)
    finally:
        parameter.RayParams, node.Node.start_api_server = ray_params, start_api_server


CAPACITY_POLL_S = 1.0


def _fits(resources: Mapping[str, float], needs: Mapping[str, float]) -> bool:
    return all(resources.get(name, 0.0) >= amount - 1e-9 for name, amount in needs.items() if amount > 0)


def node_can_host(needs: Mapping[str, float]) -> bool:
    """Whether an alive node of the cluster has, in all, the resources one actor ``needs``."""
    import ray

    return any(_fits(node["Resources"], needs) for node in ray.nodes() if node.get("Alive"))


def can_grow() -> bool:
    """Whether an autoscaler may add nodes to the cluster: autoscaler v2 (KubeRay's) reports the node types
    it can start; v1 (``ray start --autoscaling-config``) reports its status, where node types other than
    the anonymous ``node_<id>`` of a cluster without a provider show a configured one."""
    import ray
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        if ray._private.state.state.get_cluster_config() is not None:
            return True
        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    except Exception as err:  # an older head, or no GCS access: take the cluster as fixed
        log.debug("cannot read the autoscaler's state: %s", err)
        return False
    if not status:
        return False
    mapping = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return any(node_type != f"node_{node_id}" for node_id, node_type in mapping.items())


def wait_for_a_host(needs: Mapping[str, float], wait_s: float) -> None:
    """Return once a node can host one model actor that ``needs`` these resources. On a cluster that cannot
    grow, refuse at once with a ConfigError (nothing was done; more waiting cannot help); where an
    autoscaler may add nodes, wait up to ``wait_s`` for one, then raise NodeLost. The wait sleeps a second
    at a time, so a signal stops it."""
    if node_can_host(needs):
        return
    shown = {name: amount for name, amount in needs.items() if amount > 0}
    if not can_grow():
        import ray

        largest = max((n["Resources"] for n in ray.nodes() if n.get("Alive")), key=lambda r: r.get("CPU", 0.0),
                      default={})
        offered = {k: v for k, v in largest.items() if not k.startswith(("node:", "memory", "object_store"))}
        raise ConfigError(f"no node of the cluster can host a model actor, which needs {shown}, and no autoscaler "
                          f"can add one (the largest node offers {offered}): lower the actors' resources, or "
                          "run on a cluster whose nodes offer them")
    from ray.autoscaler.sdk import request_resources

    log.warning("no node of the cluster can host a model actor yet (it needs %s): waiting up to %.0fs for the "
                "autoscaler to add one", shown, wait_s)
    request_resources(bundles=[shown])  # the autoscaler adds nodes for demand, and nothing asks for them yet
    try:
        deadline = time.monotonic() + wait_s
        while not node_can_host(needs):
            if time.monotonic() >= deadline:
                raise NodeLost(f"no node that can host a model actor (it needs {shown}) joined the cluster within "
                               f"{wait_s:.0f}s (--wait-for-nodes-s); nothing was done")
            time.sleep(CAPACITY_POLL_S)
    finally:
        request_resources(bundles=[])  # from here, the actors themselves ask
    log.info("a node that can host a model actor joined the cluster")


def find_host(needs: Mapping[str, float], wait_s: float) -> dict[str, float] | None:
    """The resources of a node that can host model actors which need ``needs`` (a GPU share, custom
    resources; none: any node can, and None is returned): an alive node's, the largest; else a node type's
    that the autoscaler may start, where it publishes them (autoscaler v2, as on KubeRay); else, where an
    autoscaler may add nodes, the first such node's once it joins (see `wait_for_a_host`)."""
    import ray

    if not needs:
        return None
    hosts = [n["Resources"] for n in ray.nodes() if n.get("Alive") and _fits(n["Resources"], needs)]
    if not hosts:
        hosts = [types for types in node_types() if _fits(types, needs)]
    if not hosts:
        wait_for_a_host(needs, wait_s)
        hosts = [n["Resources"] for n in ray.nodes() if n.get("Alive") and _fits(n["Resources"], needs)]
    return dict(max(hosts, key=lambda r: r.get("CPU", 0.0))) if hosts else None


def cluster_with(host: Mapping[str, float] | None, needs: Mapping[str, float]) -> dict[str, float]:
    """The cluster's resources, and a ``host``'s where no alive node can host the model actors yet (a node
    type the autoscaler will start once they ask): what the stages are sized for."""
    import ray

    resources = dict(ray.cluster_resources())
    if host is None or node_can_host(needs):
        return resources
    return {name: resources.get(name, 0.0) + host.get(name, 0.0) for name in {*resources, *host}}


def node_types() -> list[dict[str, float]]:
    """The resources of each node type the cluster's autoscaler can start, where it publishes them (v2)."""
    import ray

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception as err:  # an older head, or no GCS access
        log.debug("cannot read the cluster's node types: %s", err)
        return []
    groups = config.node_group_configs if config is not None else []
    return [{name: float(amount) for name, amount in group.resources.items()} for group in groups if group.max_count]


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's results, for manifests and training reports."""
    found = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


# A line of a traceback that names an exception: ``albert_batch.errors.StorageError: writing … failed``.
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*): (?P<message>.*\S)", re.MULTILINE)


def worker_error(err: Exception, context: str) -> AlbertBatchError:
    """The error to raise for ``err``, which a Ray Data execution raised: ``err`` itself if this process
    raised it, else what the worker raised, in one line after ``context``. Ray hands a worker's error back
    wrapped (``RayTaskError``, or ``ActorDiedError`` when an actor's ``__init__`` failed), with the worker's
    whole traceback as its message; an error of albert-batch's own keeps its type and message, anything
    else becomes an AlbertBatchError naming the root exception."""
    from ray.exceptions import RayError

    if not isinstance(err, RayError):
        if isinstance(err, AlbertBatchError):
            return err
        while err.__cause__ is not None and str(err.__cause__):  # Ray Data chains an empty SystemException
            err = err.__cause__
        return AlbertBatchError(f"{context}: {type(err).__name__}: {err}")
    raised = [(m["type"], m["message"]) for m in _EXCEPTION_LINE.finditer(str(err))]
    ours = [(name, message) for name, message in raised if name.startswith("albert_batch.errors.")]
    if ours:
        name, message = ours[-1]  # the outermost: it names what failed, with its cause
        kind = getattr(errors_module, name.rsplit(".", 1)[1], None)
        if not (isinstance(kind, type) and issubclass(kind, AlbertBatchError)):
            kind = AlbertBatchError
        return kind(f"{context}: {message}")
    others = [(name, message) for name, message in raised if not name.startswith("ray.")
              and ("." in name or name.endswith(("Error", "Exception", "Exit", "Interrupt")))]
    name, message = others[0] if others else (type(err).__name__, str(err).splitlines()[0])
    return AlbertBatchError(f"{context}: {name}: {message}")
