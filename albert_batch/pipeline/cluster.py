"""Where a run executes: joining a Ray cluster or starting an embedded one, turning a Ray worker's error
back into the error the worker raised, and the package versions recorded with results."""

from __future__ import annotations

import logging
import os
import platform
import re
import socket
from importlib import metadata
from typing import Any

from albert_batch import errors as errors_module
from albert_batch.errors import AlbertBatchError, RayUnavailable

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
    except (ConnectionError, TimeoutError, RuntimeError) as err:
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
    """``ray.init`` of a local Ray for this process alone, listening only on free ports. ray.init has no
    setting for its dashboard agent's HTTP port, and the fixed default (52365) would keep a ``ray start``
    head started later on this machine from taking job submissions; port 0 lets the agent pick a free one.
    (Ray 2.60.x; ``pyproject.toml`` pins it, and a test checks the port.)"""
    import ray
    from ray._private import parameter

    ray_params = parameter.RayParams

    class FreePorts(ray_params):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("dashboard_agent_listen_port", 0)
            super().__init__(*args, **kwargs)

    parameter.RayParams = FreePorts
    try:
        ray.init(**{"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True, **init_args})
    finally:
        parameter.RayParams = ray_params


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
