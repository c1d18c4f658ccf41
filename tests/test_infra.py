"""The deployment files in infra/ (images, local stack, KubeRay and Airflow manifests), checked without
Docker or Kubernetes: every command line in them is accepted by the real parser of the tool that runs it,
versions match the project's pins, every environment variable is one that something reads, and no file
holds a secret."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from albert_batch.airflow.dags import DagSpec
from albert_batch.cli import build_parser, config_from_args
from albert_batch.config import RunConfig
from albert_batch.storage import Location
from support import CPU_LOCK, locked_versions

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
RAY_DOCKERFILE = INFRA / "Dockerfile"
AIRFLOW_DOCKERFILE = INFRA / "airflow.Dockerfile"
COMPOSE = INFRA / "compose.yaml"
ENV_EXAMPLE = INFRA / ".env.example"
DOCS = INFRA / "README.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
LOCKED = locked_versions(CPU_LOCK)

# Third-party images the local stack may use, each pinned to a tag; nothing else is pulled.
THIRD_PARTY_IMAGES = {"motoserver/moto", "postgres", "prom/prometheus", "grafana/grafana"}
# Variables documented by the official postgres image.
POSTGRES_IMAGE_ENV = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
# Grafana settings the stack sets, as Grafana reads them from the environment (GF_<SECTION>_<KEY>).
GRAFANA_ENV = {"GF_SECURITY_ADMIN_PASSWORD", "GF_SECURITY_ALLOW_EMBEDDING", "GF_AUTH_ANONYMOUS_ENABLED",
               "GF_AUTH_ANONYMOUS_ORG_ROLE", "GF_USERS_ALLOW_SIGN_UP"}
SECRETISH = re.compile(r"SECRET|PASSWORD|TOKEN|FERNET|ACCESS_KEY|JWT", re.IGNORECASE)
# How compose receives a secret: a required variable from infra/.env, nothing inline.
REQUIRED_VARIABLE = re.compile(r"\$\{[A-Z][A-Z0-9_]*:\?[^}]+\}")


# ---------------------------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def pip_requirement(name: str) -> Requirement:
    return next(r for r in map(Requirement, PYPROJECT["project"]["dependencies"]) if r.name == name)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def dockerfile_args(path: Path) -> dict[str, str]:
    return dict(rest.split("=", 1) for keyword, rest in dockerfile_instructions(path) if keyword == "ARG" and "=" in rest)


def base_image(path: Path, **build_args: str) -> str:
    values = {**dockerfile_args(path), **build_args}
    [image] = [rest for keyword, rest in dockerfile_instructions(path) if keyword == "FROM"]
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], image)


def compose_services() -> dict[str, dict[str, Any]]:
    return load_yaml(COMPOSE)["services"]


def env_example_names() -> set[str]:
    return {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")}


def pod_specs(cluster_spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", cluster_spec["headGroupSpec"]["template"]["spec"]
    for group in cluster_spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def raycluster() -> dict[str, Any]:
    return load_yaml(K8S / "raycluster.yaml")


def rayjob() -> dict[str, Any]:
    return load_yaml(K8S / "rayjob.yaml")


def shell_commands(markdown: str) -> list[list[str]]:
    """Every command of the ```sh blocks, continuation lines joined, split as a shell would."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip():
                commands.append(shlex.split(line, comments=True))
    return [c for c in commands if c]


def after(tokens: list[str], *prefix: str) -> list[str] | None:
    """The tokens after the first occurrence of ``prefix``, or None."""
    for i in range(len(tokens) - len(prefix) + 1):
        if tuple(tokens[i:i + len(prefix)]) == prefix:
            return tokens[i + len(prefix):]
    return None


def albert_batch_argv(tokens: list[str]) -> list[str] | None:
    """The arguments of an `albert-batch ...` or `python pipelines/batch_inference.py ...` command, run
    directly or as the entrypoint after `--`."""
    for start in ([0] if tokens[:1] else []) + [i + 1 for i, t in enumerate(tokens) if t == "--"]:
        program = tokens[start:]
        if program[:1] == ["albert-batch"]:
            return program[1:]
        if program[:2] == ["python", "pipelines/batch_inference.py"]:
            return ["run", *program[2:]]
    return None


def parse_run(argv: list[str]) -> RunConfig:
    """What `albert-batch` makes of ``argv``: parsed by its own parser, then validated as a RunConfig."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"albert-batch rejects: {shlex.join(argv)}")
    assert args.command == "run"
    return config_from_args(args)


def load_seed_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("seed_demo", INFRA / "seed_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ray_cli() -> Any:
    """Ray 2.60's own `ray` command (click), to parse command lines without running them."""
    from ray.scripts.scripts import cli

    return cli


def click_params(command: Any, args: list[str]) -> dict[str, Any]:
    import click

    try:
        return command.make_context(command.name, list(args)).params
    except click.ClickException as err:
        pytest.fail(f"`ray {command.name}` rejects {shlex.join(args)}: {err}")


def env_names_read_by_the_project() -> set[str]:
    pattern = re.compile(r"""(?:environ\.get\(|environ\[|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']""")
    files = [p for folder in ("albert_batch", "dags", "pipelines") for p in (ROOT / folder).rglob("*.py")]
    return {name for path in files for name in pattern.findall(path.read_text(encoding="utf-8"))}


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def airflow_options() -> set[str]:
    """Every `AIRFLOW__SECTION__KEY` the installed Airflow (the one the tests run) defines."""
    config = yaml.load((package_dir("airflow") / "config_templates" / "config.yml").read_text(encoding="utf-8"),
                       Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {f"AIRFLOW__{section}__{option}".upper()
            for section, body in config.items() for option in (body.get("options") or {})}


def connection_ids_used_by_dags() -> set[str]:
    configs = [*(ROOT / "dags" / "configs").glob("*.yaml"), *(INFRA / "dag-configs").glob("*.yaml")]
    specs = [DagSpec.from_yaml(path) for path in configs]
    return {conn for spec in specs for conn in (spec.ray_conn_id, spec.aws_conn_id)}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "compose environments are mappings, so anchors can merge them"
    return {str(k): str(v) for k, v in env.items()}


def env_settings_everywhere() -> dict[str, str]:
    """Every environment variable infra/ sets, with where: compose services, Ray pods, Airflow chart values."""
    found = {name: f"compose service {svc}" for svc, body in compose_services().items() for name in environment(body)}
    for doc_name, spec in (("raycluster.yaml", raycluster()["spec"]), ("rayjob.yaml", rayjob()["spec"]["rayClusterSpec"])):
        for group, pod in pod_specs(spec):
            for container in pod["containers"]:
                found.update({e["name"]: f"{doc_name} {group}" for e in container.get("env", [])})
    values = load_yaml(K8S / "airflow-values.yaml")
    found.update({e["name"]: "airflow-values.yaml env" for e in values.get("env", [])})
    found.update({e["envName"]: "airflow-values.yaml secret" for e in values.get("secret", [])})
    return found


class DockerIgnore:
    """.dockerignore as BuildKit reads it: globs per path segment, `**` across them, `!` re-includes, and a
    pattern that matches a folder matches everything in it; the last matching pattern wins."""

    def __init__(self, path: Path) -> None:
        self.rules = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                negate = line.startswith("!")
                self.rules.append((negate, self._regex(line.removeprefix("!").strip("/"))))

    @staticmethod
    def _regex(glob: str) -> re.Pattern[str]:
        out = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", glob):
            out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        return re.compile(out)

    def excludes(self, path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        excluded = False
        for negate, regex in self.rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                excluded = not negate
        return excluded


# ------------------------------------------------------------------------------------------ every file


def test_every_yaml_file_under_infra_parses_into_mappings():
    files = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")])
    assert {f.name for f in files} >= {"compose.yaml", "raycluster.yaml", "rayjob.yaml", "airflow-values.yaml"}
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        assert docs and all(isinstance(doc, dict) and doc for doc in docs), path


def test_the_docs_name_only_files_that_exist():
    named = set(re.findall(r"`([\w./*{},-]+\.(?:ya?ml|py|md|txt|example)|[\w./-]*Dockerfile)`",
                           DOCS.read_text(encoding="utf-8")))
    assert len(named) > 10
    for name in named:
        pattern = re.sub(r"\{[^}]*\}", "*", name)  # `…-{gpu,cpu}` and globs name at least one file
        assert any(list(base.glob(pattern)) for base in (ROOT, INFRA)), f"infra/README.md names {name}, which does not exist"


# ----------------------------------------------------------------------------------------------- images


def test_the_ray_image_is_the_official_ray_image_of_the_locked_ray_and_python():
    args = dockerfile_args(RAY_DOCKERFILE)
    assert Version(args["RAY_VERSION"]) in pip_requirement("ray").specifier
    assert args["RAY_VERSION"] == LOCKED["ray"], "the image runs the Ray the lock (and so the tests) run"
    assert args["PYTHON_VERSION"] == "311" == PYPROJECT["tool"]["ruff"]["target-version"].removeprefix("py")
    assert base_image(RAY_DOCKERFILE) == "rayproject/ray:2.60.0-py311-gpu"
    assert base_image(RAY_DOCKERFILE, VARIANT="cpu") == "rayproject/ray:2.60.0-py311-cpu"


def test_the_airflow_image_is_the_official_airflow_image_of_the_locked_airflow():
    args = dockerfile_args(AIRFLOW_DOCKERFILE)
    assert args["AIRFLOW_VERSION"] == LOCKED["apache-airflow"]
    assert base_image(AIRFLOW_DOCKERFILE) == f"apache/airflow:{args['AIRFLOW_VERSION']}-python3.11"
    runs = " ".join(rest for keyword, rest in dockerfile_instructions(AIRFLOW_DOCKERFILE) if keyword == "RUN")
    assert '".[airflow]"' in runs, "installs the project with its airflow extra"


def lock_installs(dockerfile: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """The Dockerfile's pip installs: (those from a lock, the others), each with its step's index."""
    installs = [(i, rest) for i, (keyword, rest) in enumerate(dockerfile_instructions(dockerfile))
                if keyword == "RUN" and "pip install" in rest]
    return [s for s in installs if "-r requirements" in s[1]], [s for s in installs if "-r requirements" not in s[1]]


@pytest.mark.parametrize("dockerfile", [RAY_DOCKERFILE, AIRFLOW_DOCKERFILE], ids=lambda p: p.name)
def test_images_install_every_dependency_from_the_lock_with_hashes_and_the_project_without_resolving(dockerfile):
    steps = dockerfile_instructions(dockerfile)
    copied = next(i for i, (keyword, rest) in enumerate(steps) if keyword == "COPY" and "requirements.lock" in rest)
    from_lock, others = lock_installs(dockerfile)
    assert from_lock and all(i > copied and "--require-hashes --no-deps" in rest for i, rest in from_lock)
    assert others and all("--no-deps --no-build-isolation" in rest for _, rest in others), "nothing outside the lock"
    assert "--extra-index-url \"$TORCH_CPU_INDEX_URL\" -r requirements.lock" in from_lock[0][1]
    assert dockerfile_args(dockerfile)["TORCH_CPU_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_the_gpu_variant_installs_the_gpu_lock_and_the_cpu_variant_the_cpu_lock():
    [(_, step)] = lock_installs(RAY_DOCKERFILE)[0]
    script = step.split("pip install")[0]
    assert '[ "$VARIANT" = "cpu" ]; then set -- --extra-index-url "$TORCH_CPU_INDEX_URL" -r requirements.lock;' in script
    assert "else set -- -r requirements-gpu.lock; fi" in script


@pytest.mark.parametrize(("dockerfile", "user"), [(RAY_DOCKERFILE, "1000:100"), (AIRFLOW_DOCKERFILE, "50000:0")],
                         ids=["ray", "airflow"])
def test_images_run_as_the_base_images_non_root_user_and_copy_code_after_dependencies(dockerfile, user):
    steps = dockerfile_instructions(dockerfile)
    assert [rest for keyword, rest in steps if keyword == "USER"] == [user]
    assert all(f"--chown={user}" in rest for keyword, rest in steps if keyword == "COPY")
    code = next(i for i, (keyword, rest) in enumerate(steps) if keyword == "COPY" and "albert_batch" in rest)
    dependency_installs = [i for i, (keyword, rest) in enumerate(steps)
                           if keyword == "RUN" and "pip install" in rest and "-r requirements" in rest]
    assert dependency_installs and max(dependency_installs) < code, "a code change must not reinstall dependencies"


def test_the_build_context_holds_what_the_images_copy_and_nothing_secret():
    ignore = DockerIgnore(ROOT / ".dockerignore")
    sources = [src for dockerfile in (RAY_DOCKERFILE, AIRFLOW_DOCKERFILE)
               for keyword, rest in dockerfile_instructions(dockerfile) if keyword == "COPY"
               for src in [w for w in rest.split() if not w.startswith("--")][:-1]]
    assert set(sources) == {"requirements.lock", "requirements-gpu.lock", "pyproject.toml", "README.md", "albert_batch"}
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not ignore.excludes(src), f".dockerignore leaves {src} out"
    assert not ignore.excludes("albert_batch/cli.py")
    for private in (".env", "infra/.env", ".venv/bin/python", ".demo/models/ner/model.safetensors",
                    ".git/config", "albert_batch/__pycache__/cli.cpython-311.pyc", "tests/conftest.py"):
        assert ignore.excludes(private), private


# ------------------------------------------------------------------------------------------ local stack


def test_compose_runs_project_images_built_from_infra_or_pinned_third_party_images():
    for name, service in compose_services().items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        if "build" in service:
            build = service["build"]
            assert (INFRA / build["context"]).resolve() == ROOT, name
            assert (ROOT / build["dockerfile"]).parent == INFRA and (ROOT / build["dockerfile"]).is_file(), name
            variant = (build.get("args") or {}).get("VARIANT")
            assert repo.startswith("albert-batch-") and "/" not in repo, f"{name}: a local tag, never pulled"
            assert tag == (f"{VERSION}-{variant}" if variant else VERSION), name
        else:
            assert repo in THIRD_PARTY_IMAGES and tag and tag != "latest", f"{name}: {image}"
    moto_tag = compose_services()["s3"]["image"].rpartition(":")[2]
    assert moto_tag == LOCKED["moto"], "the stack's S3 is the locked moto, the one the tests run against"


def test_every_environment_variable_infra_sets_is_one_that_something_reads():
    project = env_names_read_by_the_project()
    # Ray's core, and its dashboard's Metrics tab (where to find Prometheus and Grafana).
    ray_reads = (package_dir("ray") / "_raylet.so").read_bytes() + (
        package_dir("ray") / "dashboard" / "modules" / "metrics" / "metrics_head.py").read_bytes()
    botocore_reads = (package_dir("botocore") / "credentials.py").read_text(encoding="utf-8")
    airflow = airflow_options()
    connections = connection_ids_used_by_dags()
    for name, where in env_settings_everywhere().items():
        if name.startswith("ALBERT_BATCH_"):
            assert name in project, f"{where}: albert-batch never reads {name}"
        elif name.startswith("AWS_"):
            assert name in project or f"'{name}'" in botocore_reads, f"{where}: neither albert-batch nor the AWS SDK reads {name}"
        elif name.startswith("RAY_"):
            whole_word = re.compile(rb"(?<![A-Za-z0-9_])" + name.encode() + rb"(?![A-Za-z0-9_])")
            assert whole_word.search(ray_reads), f"{where}: Ray {metadata.version('ray')} does not read {name}"
        elif name.startswith("AIRFLOW_CONN_"):
            assert name.removeprefix("AIRFLOW_CONN_").lower() in connections, f"{where}: no DAG uses {name}"
        elif name.startswith("AIRFLOW__"):
            assert name in airflow, f"{where}: Airflow {metadata.version('apache-airflow')} has no option {name}"
        elif name.startswith("GF_"):
            assert name in GRAFANA_ENV and where == "compose service grafana", f"{where}: {name}"
        else:
            assert name in POSTGRES_IMAGE_ENV and where == "compose service postgres", f"{where}: {name}"
    assert {"AWS_ENDPOINT_URL", "ALBERT_BATCH_CACHE", "ALBERT_BATCH_DAG_CONFIG_DIR"} <= project


def test_ray_nodes_authenticate_with_the_token_from_env_and_read_s3_through_the_stacks_endpoint():
    services = compose_services()
    moto_port = services["s3"]["command"][services["s3"]["command"].index("-p") + 1]
    for name in ("ray-head", "ray-worker"):
        env = environment(services[name])
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")
        assert env["AWS_ENDPOINT_URL"] == f"http://s3:{moto_port}"
        assert env["AWS_ACCESS_KEY_ID"].startswith("${AWS_ACCESS_KEY_ID:?")


def test_ray_start_commands_are_ones_ray_accepts_and_the_worker_joins_the_head(ray_cli):
    services = compose_services()
    head, worker = services["ray-head"]["command"], services["ray-worker"]["command"]
    assert head[:2] == worker[:2] == ["ray", "start"]
    head_params = click_params(ray_cli.commands["start"], head[2:])
    worker_params = click_params(ray_cli.commands["start"], worker[2:])
    assert head_params["head"] and head_params["block"] and head_params["dashboard_host"] == "0.0.0.0"
    assert worker_params["address"] == f"ray-head:{head_params['port']}" and worker_params["block"]
    assert f"127.0.0.1:{head_params['dashboard_port']}:{head_params['dashboard_port']}" in services["ray-head"]["ports"]


def test_the_ray_head_healthcheck_uses_a_path_that_token_auth_leaves_open():
    probe = " ".join(compose_services()["ray-head"]["healthcheck"]["test"])
    [path] = re.findall(r"http://127\.0\.0\.1:8265(/[\w/]+)", probe)
    public = (package_dir("ray") / "dashboard" / "http_server_head.py").read_text(encoding="utf-8")
    section = public[public.index("public_exact_paths = {"):]
    assert f'"{path}"' in section[:section.index("}")], f"{path} needs a token under RAY_AUTH_MODE=token"


def test_airflow_reaches_the_stacks_ray_dashboard_and_s3_through_its_two_connections():
    services = compose_services()
    env = environment(services["airflow-scheduler"])
    ray_conn = json.loads(env["AIRFLOW_CONN_RAY_DEFAULT"])
    aws_conn = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert ray_conn["host"] == "http://ray-head:8265"
    assert ray_conn["password"].startswith("${RAY_AUTH_TOKEN:?"), "the same token as the Ray nodes"
    assert aws_conn["login"].startswith("${AWS_ACCESS_KEY_ID:?")
    assert aws_conn["password"].startswith("${AWS_SECRET_ACCESS_KEY:?")
    assert aws_conn["extra"] == {"endpoint_url": environment(services["ray-head"])["AWS_ENDPOINT_URL"],
                                 "region_name": environment(services["ray-head"])["AWS_REGION"]}
    airflow_services = [n for n, s in services.items() if s["image"].startswith("albert-batch-airflow:")]
    assert {n for n in airflow_services if environment(services[n]) == env} == set(airflow_services)
    assert {tuple(services[n]["command"]) for n in airflow_services} == {
        ("db", "migrate"), ("api-server",), ("scheduler",), ("dag-processor",), ("triggerer",)}


def test_airflow_loads_the_dag_factory_from_dags_and_the_stacks_demo_dag_config():
    service = compose_services()["airflow-dag-processor"]
    sources = {target: source for source, target, _ in (v.split(":") for v in service["volumes"] if v.endswith(":ro"))}
    config_dir = environment(service)["ALBERT_BATCH_DAG_CONFIG_DIR"]
    assert (INFRA / sources["/opt/airflow/dags"]).resolve() == ROOT / "dags"
    assert (INFRA / sources[config_dir]).resolve() == INFRA / "dag-configs"
    spec = DagSpec.from_yaml(INFRA / "dag-configs" / "demo.yaml")
    seed_demo = load_seed_demo()
    assert spec.input == f"{seed_demo.CORPUS}/dt={{{{ ds }}}}/"
    assert spec.wait_for_input["marker"] == seed_demo.MARKER
    assert (spec.classifier_model, spec.ner_model) == (seed_demo.MODELS["classify"], seed_demo.MODELS["ner"])
    assert spec.run_settings()["resources"]["num_gpus_per_actor"] == 0, "the local worker has no GPU"


def test_seed_demo_puts_what_make_demo_built_where_the_demo_dag_and_docs_read_it(s3, s3_client, tmp_path):
    import pyarrow.fs as pafs

    seed_demo = load_seed_demo()
    for bucket in ("corpus", "models"):
        s3_client.create_dir(bucket)
    with pytest.raises(SystemExit, match="make demo"):
        seed_demo.seed(tmp_path, "2026-11-28")
    files = {"corpus/part-00000.parquet": b"p0", "corpus/part-bad-rows.parquet": b"p1",
             "models/classify/config.json": b"{}", "models/classify/tokenizer/spm.model": b"t",
             "models/ner/model.safetensors": b"w", "models/data/train-ner.parquet": b"not uploaded"}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)

    assert seed_demo.main(["--demo", str(tmp_path), "--date", "2026-11-28"]) == 0

    stored = {info.path: s3_client.open_input_stream(info.path).read()
              for bucket in ("corpus", "models")
              for info in s3_client.get_file_info(pafs.FileSelector(bucket, recursive=True))
              if info.type == pafs.FileType.File}
    assert stored == {"corpus/demo/dt=2026-11-28/part-00000.parquet": b"p0",
                      "corpus/demo/dt=2026-11-28/part-bad-rows.parquet": b"p1",
                      "corpus/demo/dt=2026-11-28/_SUCCESS": b"",
                      "models/demo/classify/config.json": b"{}",
                      "models/demo/classify/tokenizer/spm.model": b"t",
                      "models/demo/ner/model.safetensors": b"w"}


def test_s3_init_creates_every_bucket_the_demo_reads_or_writes_and_can_run_again(s3, s3_client):
    import pyarrow.fs as pafs

    script = compose_services()["s3-init"]["command"][0]
    for _ in range(2):  # `docker compose up` runs it again against a store that may still hold the buckets
        exec(compile(script, "s3-init", "exec"), {})
    buckets = {info.path for info in s3_client.get_file_info(pafs.FileSelector("/"))}
    spec = DagSpec.from_yaml(INFRA / "dag-configs" / "demo.yaml")
    uris = [spec.input, spec.output, spec.classifier_model, spec.ner_model]
    assert {Location.parse(uri).path.split("/")[0] for uri in uris} <= buckets


@pytest.mark.docker
def test_docker_compose_accepts_the_stack(tmp_path):
    docker = shutil.which("docker")
    assert docker is not None and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0, \
        "docker compose is not installed"
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{name}=placeholder\n" for name in sorted(env_example_names())))
    result = subprocess.run([docker, "compose", "--env-file", str(env_file), "-f", str(COMPOSE), "--profile", "demo",
                             "config", "--quiet"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------- kubernetes


def test_the_raycluster_runs_the_project_gpu_image_at_the_pinned_ray_version():
    spec = raycluster()["spec"]
    assert spec["rayVersion"] == dockerfile_args(RAY_DOCKERFILE)["RAY_VERSION"]
    images = {c["image"] for _, pod in pod_specs(spec) for c in pod["containers"]}
    assert len(images) == 1 and images.pop().endswith(f"/albert-batch-ray:{VERSION}-gpu")


def test_the_raycluster_has_a_cpu_head_and_gpu_workers_autoscaled_from_zero_on_gpu_nodes(ray_cli):
    spec = raycluster()["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "no work on the head"
    assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in head["template"]["spec"]["containers"])
    assert spec["enableInTreeAutoscaling"] is True
    [gpu] = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    pod = gpu["template"]["spec"]
    [worker] = pod["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == worker["resources"]["limits"]["nvidia.com/gpu"]
    assert pod["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    for group in (head, gpu):
        click_params(ray_cli.commands["start"], [f"--{k}={v}" for k, v in group["rayStartParams"].items()])


def test_ray_pods_authenticate_with_a_token_kept_in_a_secret_and_their_own_s3_identity():
    spec = raycluster()["spec"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "albert-batch-ray-token"}
    service_account = load_yaml(K8S / "serviceaccount.yaml")
    for _, pod in pod_specs(spec):
        assert pod["serviceAccountName"] == service_account["metadata"]["name"]
        for container in pod["containers"]:
            assert {"secretRef": {"name": "albert-batch-s3", "optional": True}} in container["envFrom"]
            assert not [e for e in container.get("env", []) if SECRETISH.search(e["name"])]


def test_the_rayjob_runs_one_partition_with_the_cli_and_cleans_up_after_itself():
    job = rayjob()["spec"]
    config = parse_run(shlex.split(job["entrypoint"])[1:])
    assert shlex.split(job["entrypoint"])[0] == "albert-batch"
    assert len(config.partition) == 1
    assert job["shutdownAfterJobFinishes"] is True
    assert isinstance(job["ttlSecondsAfterFinished"], int) and job["ttlSecondsAfterFinished"] > 0
    assert job["activeDeadlineSeconds"] > 0
    assert job["rayClusterSpec"] == raycluster()["spec"], "a one-off cluster has the long-lived cluster's shape"


def test_the_airflow_chart_values_run_the_project_image_and_reference_every_secret():
    values = load_yaml(K8S / "airflow-values.yaml")
    airflow_version = dockerfile_args(AIRFLOW_DOCKERFILE)["AIRFLOW_VERSION"]
    assert values["airflowVersion"] == airflow_version
    image = values["images"]["airflow"]
    assert image["repository"] == values["defaultAirflowRepository"]
    assert image["repository"].endswith("/albert-batch-airflow") and image["tag"] == values["defaultAirflowTag"] == VERSION
    assert {e["envName"] for e in values["secret"]} == {"AIRFLOW_CONN_RAY_DEFAULT", "AIRFLOW_CONN_AWS_DEFAULT"}
    sync = values["dags"]["gitSync"]
    assert sync["enabled"] is True and (ROOT / sync["subPath"] / "albert_batch_dags.py").is_file()
    for inline in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert values.get(inline) is None, f"{inline}: use {inline}SecretName"
    assert values["postgresql"]["enabled"] is False and "metadataConnection" not in values["data"]
    assert {"fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"} <= set(values)


# ------------------------------------------------------------------------------------------ the docs


def test_every_albert_batch_command_line_in_infra_is_accepted_by_the_cli(monkeypatch):
    monkeypatch.chdir(ROOT)  # --config paths are relative to the working directory the job runs in
    lines = shell_commands(DOCS.read_text(encoding="utf-8"))
    lines += [shlex.split(rayjob()["spec"]["entrypoint"])]
    lines += [list(map(str, s["command"])) for s in compose_services().values() if isinstance(s.get("command"), list)]
    argvs = [argv for tokens in lines if (argv := albert_batch_argv(tokens)) is not None]
    assert len(argvs) >= 4
    for argv in argvs:
        parse_run(argv)


def test_every_ray_job_submit_in_the_docs_is_accepted_by_ray(ray_cli):
    submits = [args for tokens in shell_commands(DOCS.read_text(encoding="utf-8"))
               if (args := after(tokens, "ray", "job", "submit")) is not None]
    assert len(submits) >= 3
    for args in submits:
        params = click_params(ray_cli.commands["job"].commands["submit"], args)
        assert params["address"] == "http://127.0.0.1:8265"
        assert albert_batch_argv(list(params["entrypoint"])) is not None
        if params["runtime_env_json"]:
            runtime_env = json.loads(params["runtime_env_json"])
            assert not [k for k in runtime_env.get("env_vars", {}) if SECRETISH.search(k)], "credentials stay out"


def test_every_seed_demo_invocation_in_the_docs_is_accepted_by_it():
    runs = [args for tokens in shell_commands(DOCS.read_text(encoding="utf-8"))
            if (args := after(tokens, "run", "--rm", "seed-demo")) is not None]
    assert runs
    for args in runs:
        load_seed_demo().build_parser().parse_args(args)


# -------------------------------------------------------------------------------------------- secrets


def test_secrets_reach_the_stack_only_as_required_variables_from_infra_env():
    text = "\n".join(line for line in COMPOSE.read_text(encoding="utf-8").splitlines()
                     if not line.lstrip().startswith("#"))
    assert set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text)) == env_example_names(), "infra/.env.example lists them all"
    assert not re.findall(r"\$\{[A-Z][A-Z0-9_]*(?::?-)", text), "no secret has a default"
    for name, service in compose_services().items():
        for key, value in environment(service).items():
            if SECRETISH.search(key):
                assert REQUIRED_VARIABLE.fullmatch(value), f"{name}: {key} must come from infra/.env"
    for url in re.findall(r"\w+://[^\s/\"']*@", text):
        assert REQUIRED_VARIABLE.search(url), f"a password in {url}"
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            assert line.endswith("="), f".env.example ships no values: {line}"
    assert (INFRA / ".gitignore").read_text().splitlines()[-1] == ".env"


def test_no_file_in_infra_holds_a_secret():
    files = [p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts] + [ROOT / ".dockerignore"]
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", text), f"{path}: an AWS access key id"
        assert "PRIVATE KEY-----" not in text, path
    for path in K8S.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert doc.get("kind") != "Secret", f"{path}: Secrets are created by hand (infra/README.md)"
    for dockerfile in (RAY_DOCKERFILE, AIRFLOW_DOCKERFILE):
        for keyword, rest in dockerfile_instructions(dockerfile):
            if keyword in ("ARG", "ENV"):
                assert not SECRETISH.search(rest.split("=")[0]), f"{dockerfile.name}: {keyword} {rest}"
