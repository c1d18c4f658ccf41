"""The lock (`requirements.lock`, and `requirements-gpu.lock` for CUDA machines) decides every installed
version: the environment equals it, it satisfies what pyproject.toml asks for, and the two locks differ only
in the build of torch and what that build needs."""

from __future__ import annotations

import re
import sysconfig
import tomllib
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from support import CPU_LOCK, GPU_LOCK, ROOT, locked_versions

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# The extras `make` installs (Makefile's lock and install lines).
EXTRAS = ("test", "airflow", "iceberg", "openlineage", "docs")
# What only PyPI's CUDA build of torch brings in.
CUDA_ONLY = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")
# Installed beside the lock: the project itself (editable) and the venv's own installer.
NOT_LOCKED = {"albert-batch", "pip"}


def installed() -> dict[str, str]:
    """The environment's packages: those in its site-packages, not what a package vendors on sys.path (Ray
    puts its own copies of a few packages there)."""
    folders = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions(path=folders)}


def the_installed_lock() -> dict[str, str]:
    """The lock this environment was installed from: the CPU lock unless torch is PyPI's CUDA build."""
    return locked_versions(CPU_LOCK if Version(metadata.version("torch")).local == "cpu" else GPU_LOCK)


def test_every_installed_package_is_at_its_locked_version_and_nothing_unlocked_is_installed():
    lock, present = the_installed_lock(), installed()
    assert len(lock) > 100, "the lock names the whole tree, not only direct dependencies"
    different = {name: (present.get(name), version) for name, version in lock.items() if present.get(name) != version}
    assert not different, f"installed (left) differs from the lock (right): {different}; run `make` again"
    unlocked = set(present) - set(lock) - NOT_LOCKED
    assert not unlocked, f"installed but not in the lock: {sorted(unlocked)}"


def test_the_lock_satisfies_every_requirement_of_pyproject_and_its_extras():
    requirements = [Requirement(r) for r in PYPROJECT["dependencies"]]
    requirements += [Requirement(r) for extra in EXTRAS for r in PYPROJECT["optional-dependencies"][extra]]
    environment = default_environment() | {"python_version": "3.11", "sys_platform": "linux"}
    for path in (CPU_LOCK, GPU_LOCK):
        lock = locked_versions(path)
        for requirement in requirements:
            if requirement.marker and not requirement.marker.evaluate(environment | {"extra": ""}):
                continue
            name = canonicalize_name(requirement.name)
            assert name in lock, f"{path.name} lacks {name}: run `make lock` after changing pyproject.toml"
            assert requirement.specifier.contains(lock[name], prereleases=True), f"{path.name}: {name}=={lock[name]} is outside {requirement}"


def test_torch_is_the_cpu_build_of_the_constrained_version_and_the_gpu_lock_differs_only_in_its_build():
    [pin] = [Requirement(line) for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    cpu, gpu = locked_versions(CPU_LOCK), locked_versions(GPU_LOCK)
    assert Version(cpu["torch"]).local == "cpu" and Version(gpu["torch"]).local is None
    assert pin.specifier.contains(cpu["torch"]) and pin.specifier.contains(gpu["torch"])
    assert not set(cpu) - set(gpu), "the GPU lock has every package of the CPU lock"
    assert all(CUDA_ONLY.match(name) for name in set(gpu) - set(cpu)), sorted(set(gpu) - set(cpu))
    shared = (set(cpu) & set(gpu)) - {"torch"}
    assert {name: cpu[name] for name in shared} == {name: gpu[name] for name in shared}


def test_every_pin_carries_hashes_so_pip_installs_only_what_was_locked():
    for path in (CPU_LOCK, GPU_LOCK):
        entries = re.split(r"\n(?=[A-Za-z0-9])", path.read_text(encoding="utf-8"))
        pins = [entry for entry in entries if re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*==", entry)]
        assert len(pins) == len(locked_versions(path))
        unhashed = [entry.split()[0] for entry in pins if "--hash=sha256:" not in entry]
        assert not unhashed, f"{path.name}: {unhashed}"
