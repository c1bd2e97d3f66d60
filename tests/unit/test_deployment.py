"""Static checks of docker/: the compose file, both images, Prometheus, Grafana and the Kubernetes manifests.

This machine has no Docker engine and no cluster, so these check what holds without one: every file and path they
name exists, ports, server release and CPU sizing agree with the kit, the dashboard asks only for metrics Triton
2.51 exports, and the manifests render with `kubectl kustomize`. `kubectl apply --dry-run=client` is not used: even
with --validate=false it needs an API server to map kinds to resources.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.metadata
import inspect
import json
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest
import yaml
from packaging.requirements import Requirement

from builder.cli import DEFAULT_ARTIFACTS, DEFAULT_REPOSITORY
from builder.models import resolve_spec
from builder.serving.server import EmbeddedServer
from builder.serving.tritonconfig import ServingConfig, build_config, parse_text, to_text

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"

# nvidia-pytriton release -> (the Triton server it embeds, the NGC container of that server). From PyTriton's
# CHANGELOG ("Version of Triton Inference Server embedded in wheel") and Triton's release notes (container 24.10 is
# server 2.51.0). The wheel's binary has no --version; the running server reports 2.51.0 at GET /v2.
TRITON_RELEASES = {"0.7.0": ("2.51.0", "24.10")}

# What server 2.51 exports with --metrics-config=summary_latencies=true on CPU: listed by hand from a scrape of the
# embedded server started with docker/Dockerfile's flags.
TRITON_2_51_METRICS = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count", "nv_inference_exec_count",
    "nv_inference_request_duration_us", "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count", "nv_cpu_utilization", "nv_cpu_memory_total_bytes",
    "nv_cpu_memory_used_bytes", "nv_inference_request_summary_us", "nv_inference_queue_summary_us",
    "nv_inference_compute_input_summary_us", "nv_inference_compute_infer_summary_us",
    "nv_inference_compute_output_summary_us",
}

# What the load generator imports; each must be pinned in its image.
LOAD_GENERATOR_PACKAGES = {"tritonclient", "locust", "numpy", "pyyaml", "tokenizers"}

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH: the manifests were not rendered")


def kit_ports() -> dict[str, int]:
    """The embedded server's default ports, {"http": 8000, "grpc": 8001, "metrics": 8002}."""
    parameters = inspect.signature(EmbeddedServer.__init__).parameters
    return {name: parameters[f"{name}_port"].default for name in ("http", "grpc", "metrics")}


def instructions(dockerfile: pathlib.Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(keyword.upper(), args.strip()) for keyword, args in (line.split(None, 1) for line in text.splitlines()
                                                                  if line.strip())]


def instruction(dockerfile: pathlib.Path, keyword: str) -> list[str]:
    return [args for key, args in instructions(dockerfile) if key == keyword]


def server_flags(dockerfile: pathlib.Path = DOCKER / "Dockerfile") -> dict[str, str]:
    """The Triton image's CMD as {flag: value}."""
    (cmd,) = instruction(dockerfile, "CMD")
    argv = json.loads(cmd)
    assert argv[0] == "tritonserver"
    return dict(arg.removeprefix("--").split("=", 1) for arg in argv[1:])


def ignored(path: str, ignore_file: pathlib.Path) -> bool:
    """Whether a build-context path is left out by a .dockerignore. Docker's rules, as far as the patterns used here
    need them: the last matching line wins, `!` takes back in, a pattern that matches a folder matches what is in
    it, and `**/` matches at any depth."""
    def matches(candidate: str, pattern: str) -> bool:
        if pattern.startswith("**/"):
            parts = candidate.split("/")
            return any(fnmatch.fnmatchcase("/".join(parts[i:]), pattern[3:]) for i in range(len(parts)))
        return fnmatch.fnmatchcase(candidate, pattern)

    parts = path.rstrip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for line in ignore_file.read_text().splitlines():
        pattern = line.strip()
        if pattern and not pattern.startswith("#"):
            negate = pattern.startswith("!")
            if any(matches(c, pattern.removeprefix("!").rstrip("/")) for c in candidates):
                excluded = not negate
    return excluded


@functools.cache
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def published(service: dict) -> dict[int, int]:
    """{container port: host port} of a compose service's `ports` ("[ip:]host:container")."""
    return {int(p.split(":")[-1]): int(p.split(":")[-2]) for p in service.get("ports", [])}


def bind_mounts(service: dict) -> list[tuple[pathlib.Path, str, bool]]:
    """(host path, container path, read-only) of each bind mount ("host:container[:ro]")."""
    mounts = []
    for volume in service.get("volumes", []):
        host, target, *mode = volume.split(":")
        assert host.startswith((".", "/")), f"`{volume}`: only bind mounts are used"
        mounts.append(((DOCKER / host).resolve(), target, mode == ["ro"]))
    return mounts


@functools.cache
def render(folder: str) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(K8S / folder)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, f"kubectl kustomize {folder}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(documents: list[dict], kind: str, name: str) -> dict:
    (match,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return match


def cpus(quantity: str | int) -> float:
    quantity = str(quantity)
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# --- Docker Compose ---------------------------------------------------------------------------------------------

def test_compose_names_only_files_and_folders_that_exist():
    services = compose()["services"]
    assert set(services) == {"triton", "triton-gpu", "locust-master", "locust-worker", "prometheus", "grafana"}
    for name, service in services.items():
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert context == ROOT, f"{name}: the build context is the repository root"
            dockerfile = context / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
            # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile instead of one at the context root
            assert dockerfile.with_name(dockerfile.name + ".dockerignore").is_file()
        for host, target, read_only in bind_mounts(service):
            # artifacts/ is made by `builder build`; everything else is in the repository
            assert host.exists() or host == ROOT / DEFAULT_ARTIFACTS, f"{name}: {host} (mounted at {target}) is missing"
            assert read_only, f"{name}: {host} is mounted writable"


def test_triton_serves_the_builders_repository_read_only():
    repository = server_flags()["model-repository"]
    for name in ("triton", "triton-gpu"):
        assert (ROOT / DEFAULT_REPOSITORY, repository, True) in bind_mounts(compose()["services"][name])
    for name in ("locust-master", "locust-worker"):
        assert (ROOT / DEFAULT_ARTIFACTS, "/artifacts", True) in bind_mounts(compose()["services"][name])
    assert compose()["services"]["locust-master"]["command"][-2:] == ["--artifacts", "/artifacts"]


def test_cpu_is_the_default_and_the_gpu_profile_reserves_gpus():
    services = compose()["services"]
    assert "COMPOSE_PROFILES=cpu" in (DOCKER / ".env").read_text().splitlines()
    assert services["triton"]["profiles"] == ["cpu"] and services["triton-gpu"]["profiles"] == ["gpu"]
    (device,) = services["triton-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    # the same server otherwise, reachable under the same name
    assert services["triton-gpu"]["networks"]["default"]["aliases"] == ["triton"]
    same = ("image", "build", "ports", "volumes", "shm_size")
    assert {k: services["triton"][k] for k in same} == {k: services["triton-gpu"][k] for k in same}


def test_every_port_agrees_with_the_kit_defaults():
    ports = kit_ports()
    for name in ("triton", "triton-gpu"):
        assert published(compose()["services"][name]) == {p: p for p in ports.values()}
    flags = server_flags()
    assert {name: int(flags[f"{name}-port"]) for name in ports} == ports
    (expose,) = instruction(DOCKER / "Dockerfile", "EXPOSE")
    assert sorted(map(int, expose.split())) == sorted(ports.values())
    (healthcheck,) = instruction(DOCKER / "Dockerfile", "HEALTHCHECK")
    assert f"127.0.0.1:{ports['http']}/v2/health/ready" in healthcheck
    assert compose()["x-locust"]["environment"]["LOCUST_HOST"] == f"${{LOCUST_HOST:-grpc://triton:{ports['grpc']}}}"


def test_prometheus_scrapes_tritons_metrics_port():
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"triton:{kit_ports()['metrics']}"]
    prometheus = compose()["services"]["prometheus"]
    assert (DOCKER / "prometheus" / "prometheus.yml", "/etc/prometheus/prometheus.yml", True) in bind_mounts(prometheus)
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


# --- images -----------------------------------------------------------------------------------------------------

def test_triton_image_is_the_embedded_server_release():
    pytriton = importlib.metadata.version("nvidia-pytriton")
    assert pytriton in TRITON_RELEASES, (
        f"nvidia-pytriton {pytriton} is new here: add the Triton server it embeds (its CHANGELOG) and that server's "
        "container to TRITON_RELEASES, and move docker/Dockerfile and the KServe runtimeVersion to that container")
    _server, container = TRITON_RELEASES[pytriton]
    assert instruction(DOCKER / "Dockerfile", "FROM") == [f"nvcr.io/nvidia/tritonserver:{container}-py3"]
    kserve = yaml.safe_load((K8S / "kserve" / "inferenceservice.yaml").read_text())
    assert kserve["spec"]["predictor"]["model"]["runtimeVersion"] == f"{container}-py3"


def test_triton_server_flags():
    flags = server_flags()
    assert flags["model-control-mode"] == "explicit" and flags["load-model"] == "*"
    assert flags["strict-readiness"] == "true" and flags["allow-metrics"] == "true"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.locust"])
def test_build_context_keeps_what_copy_needs_and_nothing_private(dockerfile):
    ignore_file = DOCKER / f"{dockerfile}.dockerignore"
    for args in instruction(DOCKER / dockerfile, "COPY"):
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile}: COPY {source}: not in the repository"
            assert not ignored(source, ignore_file), f"{dockerfile}: COPY {source} is excluded by {ignore_file.name}"
    for private in (".venv", ".git", str(DEFAULT_ARTIFACTS), "reports", "tests", ".staging-m-x"):
        assert ignored(private, ignore_file), f"{ignore_file.name} sends {private} to the builder"


def test_locust_image_pins_satisfy_the_kits_requirements():
    # the installed kit's metadata: pyproject.toml's dependencies as of `make install`, with its `client` and `kit`
    # extras (the load generator needs the client's)
    declared = {r.name.lower(): r for r in map(Requirement, importlib.metadata.requires("triton-deploy-kit"))
                if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("client", "kit"))}
    pins, kit_without_deps = {}, False
    for run in instruction(DOCKER / "Dockerfile.locust", "RUN"):
        for command in run.split("&&"):
            words = shlex.split(command)
            if words[:2] != ["pip", "install"]:
                continue
            if words[2:] == ["--no-deps", "."]:
                kit_without_deps = True
                continue
            for word in words[2:]:
                requirement = Requirement(word)
                (spec,) = requirement.specifier
                assert spec.operator == "==", f"Dockerfile.locust: pin {word} exactly"
                pins[requirement.name.lower()] = spec.version
    assert kit_without_deps, "Dockerfile.locust installs the kit with `pip install --no-deps .`"
    assert set(pins) == LOAD_GENERATOR_PACKAGES
    for name, version in pins.items():
        assert declared[name].specifier.contains(version), f"{name}=={version} is outside pyproject's {declared[name]}"


# --- Grafana ----------------------------------------------------------------------------------------------------

def test_dashboard_asks_only_for_metrics_triton_2_51_exports():
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "triton.json").read_text())
    datasources = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    expressions = []
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], f"panel `{panel['title']}` has no query"
        for target in panel["targets"]:
            metrics = set(re.findall(r"\bnv_\w+", target["expr"]))
            assert metrics and metrics <= TRITON_2_51_METRICS, f"`{panel['title']}`: {metrics - TRITON_2_51_METRICS}"
            expressions.append(target["expr"])
    text = "\n".join(expressions)
    assert "rate(nv_inference_request_success" in text                                   # throughput
    assert re.search(r'nv_inference_request_summary_us\{[^}]*quantile="0.99"', text)      # p99
    assert "nv_inference_queue_duration_us" in text and "nv_inference_compute_infer_duration_us" in text
    # the summaries exist only when the server is started with them
    assert server_flags()["metrics-config"] == "summary_latencies=true"


def test_grafana_loads_the_dashboard_from_where_compose_mounts_it():
    grafana = compose()["services"]["grafana"]
    mounts = {target: host for host, target, _ in bind_mounts(grafana)}
    provider = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "dashboards" / "triton.yml").read_text())
    dashboards = provider["providers"][0]["options"]["path"]
    assert mounts[dashboards] == DOCKER / "grafana" / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (mounts[dashboards] / pathlib.PurePosixPath(home).relative_to(dashboards)).is_file()
    assert mounts["/etc/grafana/provisioning"] == DOCKER / "grafana" / "provisioning"


# --- Kubernetes -------------------------------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("folder", ["overlays/cpu", "overlays/gpu", "locust"])
def test_manifests_render(folder):
    documents = render(folder)
    assert documents
    for doc in documents:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc


def test_kserve_manifest_parses():
    doc = yaml.safe_load((K8S / "kserve" / "inferenceservice.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert doc["metadata"]["name"]
    assert doc["spec"]["predictor"]["model"]["modelFormat"]["name"] == "triton"


@needs_kubectl
@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_triton_deployment_probes_ports_and_repository(overlay):
    documents = render(overlay)
    pod = find(documents, "Deployment", "triton")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == kit_ports()
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == server_flags()["model-repository"])
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] and find(documents, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert pod["securityContext"]["runAsUser"] == 1000   # the image's USER
    service = find(documents, "Service", "triton")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == kit_ports()
    hpa = find(documents, "HorizontalPodAutoscaler", "triton")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    assert container["resources"]["requests"]["cpu"]   # CPU utilization is measured against the request


@needs_kubectl
@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_cpus_are_instances_times_intra_op_threads(overlay):
    template = find(render(overlay), "Deployment", "triton")["spec"]["template"]
    flags = template["metadata"]["annotations"]["triton-kit/build-flags"]
    match = re.fullmatch(r"--instances (\d+) --threads (\d+)", flags)
    assert match, f"{overlay}: triton-kit/build-flags is `{flags}`"
    serving = ServingConfig(instances=int(match[1]), intra_op_threads=int(match[2]))
    config = parse_text(to_text(build_config("digits_fp32", resolve_spec("digits"), serving)))
    threads = config.instance_group[0].count * int(config.parameters["intra_op_thread_count"].string_value)
    resources = template["spec"]["containers"][0]["resources"]
    assert cpus(resources["requests"]["cpu"]) == cpus(resources["limits"]["cpu"]) == threads


@needs_kubectl
def test_gpu_overlay_asks_for_a_gpu_with_the_same_image():
    cpu, gpu = (find(render(overlay), "Deployment", "triton")["spec"]["template"]["spec"]
                for overlay in ("overlays/cpu", "overlays/gpu"))
    assert int(gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert gpu["containers"][0]["image"] == cpu["containers"][0]["image"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"].get("limits", {})


@needs_kubectl
def test_locust_workers_find_their_master_and_target_triton():
    documents = render("locust")
    master = find(documents, "Deployment", "locust-master")["spec"]["template"]["spec"]["containers"][0]
    worker = find(documents, "Deployment", "locust-worker")["spec"]["template"]["spec"]["containers"][0]
    service = find(documents, "Service", "locust-master")
    assert master["args"][0] == "--master" and worker["args"][:3] == ["--worker", "--master-host", "locust-master"]
    assert 5557 in {p["port"] for p in service["spec"]["ports"]}
    triton_service = find(render("overlays/cpu"), "Service", "triton")["metadata"]["name"]
    for container in (master, worker):
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["LOCUST_HOST"] == f"grpc://{triton_service}:{kit_ports()['grpc']}"


# --- the repository the image serves ----------------------------------------------------------------------------

def test_models_the_builder_writes_are_readable_by_the_images_user(tmp_path):
    from builder.serving.repository import write_model

    onnx_file = tmp_path / "src.onnx"
    onnx_file.write_bytes(b"onnx")
    config = 'name: "m"\nbackend: "onnxruntime"\nmax_batch_size: 4\n'
    version_dir = write_model(tmp_path / "repo", "m", config, onnx_file)
    for folder in (version_dir.parent, version_dir):
        assert folder.stat().st_mode & 0o005 == 0o005, f"{folder} is not readable by other users"
