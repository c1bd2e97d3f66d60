"""Static checks of docker/: the compose file, both images, their entrypoint and probe, Prometheus, Grafana and the
Kubernetes manifests.

This machine has no Docker engine and no cluster, so these check what holds without one: every file and path they
name exists, ports, server release, flags and CPU sizing agree with the kit, the dashboard asks only for metrics
Triton 2.51 exports, the manifests render with `kubectl kustomize`, validate against the Kubernetes schemas
(kubernetes-validate, strict) and meet the Pod Security "restricted" profile (checked field by field below), and
the image's entrypoint builds the server's command line as promised (run here with a stand-in `tritonserver`).
tests/e2e/test_docker_entrypoint.py runs the entrypoint and the probe against the real embedded 2.51 server.
`kubectl apply --dry-run=client` is not used: even with --validate=false it needs an API server.
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
import importlib.util
import os
import subprocess

import pytest
import yaml
from packaging.requirements import Requirement

from builder.commands.options import DEFAULT_ARTIFACTS, DEFAULT_REPOSITORY
from builder.pipeline.models import resolve_spec
from builder.serving.front import FRONT_HEADER
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

# Every kustomization under docker/k8s that is applied on its own.
KUSTOMIZATIONS = ["overlays/cpu", "overlays/gpu", "overlays/pvc", "fill-pvc", "smoke", "locust", "kserve"]
# Where the image puts its entrypoint and probe (docker/Dockerfile's COPY lines say so too; a test checks).
IMAGE_PROBE = "/opt/triton-kit/probe.py"
IMAGE_ENTRYPOINT = "/opt/triton-kit/entrypoint.sh"
ENTRYPOINT = DOCKER / "triton" / "entrypoint.sh"
PROBE = DOCKER / "triton" / "probe.py"
ADMIN_HEADER = "tritonkit-admin-key"
RESTRICTED_APIS = {"model-repository", "shared-memory", "trace", "logging"}


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


def image_args() -> list[str]:
    """The Triton image's CMD: tritonserver's flags, which its ENTRYPOINT (docker/triton/entrypoint.sh) passes on."""
    (cmd,) = instruction(DOCKER / "Dockerfile", "CMD")
    return json.loads(cmd)


def flags(argv: list[str]) -> dict[str, str]:
    """tritonserver's `--name=value` flags as {name: value}; every flag is given once."""
    pairs = [arg.removeprefix("--").split("=", 1) for arg in argv]
    assert all(arg.startswith("--") and len(pair) == 2 for arg, pair in zip(argv, pairs)), argv
    assert len({name for name, _ in pairs}) == len(pairs), f"a flag given twice: {argv}"
    return dict(pairs)


def server_flags() -> dict[str, str]:
    """The Triton image's CMD as {flag: value}."""
    return flags(image_args())


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


def pod_templates(documents: list[dict]) -> list[tuple[str, dict]]:
    """(kind/name, pod spec) of every workload in a rendering: Deployments, Jobs and KServe's ServingRuntime."""
    pods = []
    for doc in documents:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "Job"):
            pods.append((name, doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "ServingRuntime":
            pods.append((name, doc["spec"]))
    return pods


def triton_pod(overlay: str) -> dict:
    return find(render(overlay), "Deployment", "triton")["spec"]["template"]["spec"]


def load_probe():
    spec = importlib.util.spec_from_file_location("triton_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    same = ("image", "build", "ports", "volumes", "shm_size", "command", "env_file")
    assert {k: services["triton"][k] for k in same} == {k: services["triton-gpu"][k] for k in same}


def test_every_port_agrees_with_the_kit_defaults():
    ports = kit_ports()
    for name in ("triton", "triton-gpu"):
        assert published(compose()["services"][name]) == {p: p for p in ports.values()}
    assert {name: int(server_flags()[f"{name}-port"]) for name in ports} == ports
    (expose,) = instruction(DOCKER / "Dockerfile", "EXPOSE")
    assert sorted(map(int, expose.split())) == sorted(ports.values())
    (healthcheck,) = instruction(DOCKER / "Dockerfile", "HEALTHCHECK")
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["python3", IMAGE_PROBE, "ready", "--url",
                                                           f"http://127.0.0.1:{ports['http']}"]
    assert compose()["x-locust"]["environment"]["LOCUST_HOST"] == f"${{LOCUST_HOST:-grpc://triton:{ports['grpc']}}}"


def test_compose_publishes_on_loopback_unless_told_otherwise():
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            host_ip = port.rsplit(":", 2)[0]
            # Triton's address can be opened with TRITON_BIND=0.0.0.0; by default, and for the rest, loopback
            expected = "${TRITON_BIND:-127.0.0.1}" if name.startswith("triton") else "127.0.0.1"
            assert host_ip == expected, f"{name} publishes {port}"


def test_compose_takes_the_key_from_an_optional_file_kept_out_of_git_and_the_image():
    (env_file,) = compose()["x-triton"]["env_file"]
    assert env_file == {"path": "./triton.env", "required": False}
    assert "triton.env" in (DOCKER / ".gitignore").read_text().split()
    assert ignored("docker/triton.env", DOCKER / "Dockerfile.dockerignore")
    assert "TRITONKIT_ADMIN_KEY" in ENTRYPOINT.read_text()


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
        "container to TRITON_RELEASES, and move docker/Dockerfile to that container")
    _server, container = TRITON_RELEASES[pytriton]
    assert instruction(DOCKER / "Dockerfile", "FROM") == [f"nvcr.io/nvidia/tritonserver:{container}-py3"]


def test_production_flags_lock_model_control_and_fail_loudly():
    cmd = server_flags()
    assert cmd["model-control-mode"] == "none" and "load-model" not in cmd   # nothing loads or unloads later
    assert cmd["exit-on-error"] == "true"          # a model that fails to load ends the server
    assert cmd["strict-readiness"] == "true" and cmd["allow-metrics"] == "true"
    assert int(cmd["exit-timeout-secs"]) > 0
    # the restricted-API flags come from the entrypoint, so no override of the arguments can drop them
    assert not {"http-restricted-api", "grpc-restricted-protocol"} & set(cmd)
    # NVIDIA's entrypoint first (its CUDA compatibility setup and banner), then ours
    (entrypoint,) = instruction(DOCKER / "Dockerfile", "ENTRYPOINT")
    assert json.loads(entrypoint) == ["/opt/nvidia/nvidia_entrypoint.sh", IMAGE_ENTRYPOINT]


def test_compose_and_kubernetes_run_the_images_flags():
    cmd = server_flags()
    development = flags(compose()["x-triton"]["command"])
    # compose: explicit model control for the rebuild-and-reload loop (locked by the key), otherwise the same
    assert development.pop("model-control-mode") == "explicit" and development.pop("load-model") == "*"
    assert development == {k: v for k, v in cmd.items() if k != "model-control-mode"}
    if KUBECTL:
        for overlay in ("overlays/cpu", "overlays/gpu", "overlays/pvc"):
            (container,) = triton_pod(overlay)["containers"]
            assert "command" not in container, f"{overlay}: `command` would bypass the image's entrypoint"
            assert flags(container["args"]) == cmd, overlay
        (runtime,) = [d for d in render("kserve") if d["kind"] == "ServingRuntime"]
        (container,) = runtime["spec"]["containers"]
        assert "command" not in container
        kserve = flags(container["args"])
        assert (kserve.pop("http-port"), kserve.pop("grpc-port")) == ("8080", "9000")   # KServe's ports
        assert kserve == {k: v for k, v in cmd.items() if k not in ("http-port", "grpc-port")}


def test_image_copies_entrypoint_and_probe_where_the_manifests_call_them():
    copies = {shlex.split(args)[-2]: shlex.split(args)[-1] for args in instruction(DOCKER / "Dockerfile", "COPY")}
    assert copies["docker/triton/entrypoint.sh"] == IMAGE_ENTRYPOINT
    assert copies["docker/triton/probe.py"] == IMAGE_PROBE
    assert "--chmod=0755" in next(a for a in instruction(DOCKER / "Dockerfile", "COPY") if "entrypoint.sh" in a)
    assert os.access(ENTRYPOINT, os.X_OK), "docker/triton/entrypoint.sh is not executable"


def test_ensemble_dependencies_are_pinned_without_their_dependencies():
    (run,) = [r for r in instruction(DOCKER / "Dockerfile", "RUN") if "pip install" in r]
    words = shlex.split(run)
    assert "--no-deps" in words
    packages = [Requirement(w) for w in words[words.index("install") + 1:] if not w.startswith("-")]
    assert [p.name for p in packages] == ["tokenizers"], "what the raw-text tokenizer model imports beyond the image"
    (spec,) = packages[0].specifier
    # the release the kit's tests run the tokenizer model with, and the Locust image's pin
    assert spec.operator == "==" and spec.version == importlib.metadata.version("tokenizers")
    assert f"tokenizers=={spec.version}" in instruction(DOCKER / "Dockerfile.locust", "RUN")[0]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.locust"])
def test_build_context_keeps_what_copy_needs_and_nothing_private(dockerfile):
    ignore_file = DOCKER / f"{dockerfile}.dockerignore"
    for args in instruction(DOCKER / dockerfile, "COPY"):
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile}: COPY {source}: not in the repository"
            assert not ignored(source, ignore_file), f"{dockerfile}: COPY {source} is excluded by {ignore_file.name}"
    for private in (".venv", ".git", str(DEFAULT_ARTIFACTS), "reports", "tests", ".staging-m-x", "docker/triton.env"):
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


# --- the entrypoint, with a stand-in tritonserver that prints what it was given --------------------------------

@pytest.fixture
def entrypoint(tmp_path):
    """run(args, env=..., repository=...) -> (returncode, argv given to tritonserver, stderr, its environment)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "tritonserver"
    # it waits (up to 3 s) for the front to start, so that the front's flags are recorded before both are stopped
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGV_OUT"\nenv > "$ENV_OUT"\n'
                    'case "$*" in *--http-port=18000*) for i in $(seq 30); do [ -e "$FRONT_ARGV_OUT" ] && break; '
                    'sleep 0.1; done ;; esac\n')
    fake.chmod(0o755)
    # a stand-in front that records its flags and waits to be stopped (the real one: tests/unit/test_front.py)
    front = tmp_path / "front.py"
    front.write_text("import json, os, sys, time\nopen(os.environ['FRONT_ARGV_OUT'], 'w').write(json.dumps(sys.argv[1:]))"
                     "\ntime.sleep(60)\n")

    def run(args: list[str], env: dict | None = None):
        out, env_out = tmp_path / "argv", tmp_path / "env"
        out.unlink(missing_ok=True)
        full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ARGV_OUT": str(out), "ENV_OUT": str(env_out),
                    "TRITONKIT_ADMIN_KEY_FILE": str(tmp_path / "no-such-key"), "TRITONKIT_FRONT": str(front),
                    "FRONT_ARGV_OUT": str(tmp_path / "front-argv"), **(env or {})}
        result = subprocess.run(["bash", str(ENTRYPOINT), *args], env=full_env, capture_output=True, text=True,
                                timeout=30, check=False)
        argv = out.read_text().splitlines() if out.exists() else None
        environment = env_out.read_text() if env_out.exists() else ""
        return result.returncode, argv, result.stderr, environment

    return run


@pytest.fixture
def repository(tmp_path):
    root = tmp_path / "models"
    (root / "m_fp32").mkdir(parents=True)
    (root / "m_fp32" / "config.pbtxt").write_text('name: "m_fp32"\nbackend: "onnxruntime"\n'
                                                  'instance_group {\n  kind: KIND_CPU\n}\n')
    return root


def restricted(argv: list[str]) -> dict[str, tuple[set[str], str, str]]:
    """{flag: (APIs, header, key)} of the admin-key restricted-API flags in `argv` (`<apis>:<header>=<key>`)."""
    return {name: lock for name, lock in locks(argv) if lock[1] == ADMIN_HEADER}


def locks(argv: list[str]) -> list[tuple[str, tuple[set[str], str, str]]]:
    """[(flag, (APIs, header, key))] of every restricted-API flag in `argv`, in order."""
    found = []
    for arg in argv:
        name, _, value = arg.removeprefix("--").partition("=")
        if name in ("http-restricted-api", "grpc-restricted-protocol"):
            apis, setting = value.split(":", 1)
            header, key = setting.split("=", 1)
            found.append((name, (set(apis.split(",")), header, key)))
    return found


def test_entrypoint_locks_admin_apis_with_the_key_from_the_environment(entrypoint, repository):
    args = [f"--model-repository={repository}", "--model-control-mode=none", "--http-port=8000"]
    code, argv, stderr, environment = entrypoint(args, env={"TRITONKIT_ADMIN_KEY": "k" * 32})
    assert code == 0, stderr
    assert argv[:len(args)] == args                 # the caller's flags, unchanged and first
    locks = restricted(argv)
    assert locks == {"http-restricted-api": (RESTRICTED_APIS, ADMIN_HEADER, "k" * 32),
                     "grpc-restricted-protocol": (RESTRICTED_APIS, ADMIN_HEADER, "k" * 32)}
    assert "TRITONKIT_ADMIN_KEY=" not in environment   # not passed on to the server and its stubs
    assert "k" * 32 not in stderr                       # said where it came from, never what it is


def test_entrypoint_puts_tritons_http_behind_the_front(entrypoint, repository, tmp_path):
    args = [f"--model-repository={repository}", "--http-port=8000"]
    code, argv, stderr, _ = entrypoint(args, env={"TRITONKIT_ADMIN_KEY": "k" * 32, "TRITONKIT_MAX_BODY_MB": "8"})
    assert code == 0, stderr
    # Triton's own HTTP: loopback on a port of its own, given after the caller's flags (the last one wins)
    assert argv[len(args):len(args) + 2] == ["--http-address=127.0.0.1", "--http-port=18000"]
    (_, (apis, header, front_key)), = [lock for lock in locks(argv) if lock[1][1] == FRONT_HEADER]
    assert apis == {"inference", "health", "metadata", "model-config", "statistics"}
    assert re.fullmatch(r"[0-9a-f]{64}", front_key) and front_key not in stderr
    front = json.loads((tmp_path / "front-argv").read_text())
    assert front[:2] == ["--listen=0.0.0.0:8000", "--upstream=18000"] and "--max-body-mb=8" in front
    assert not pathlib.Path(front[2].removeprefix("--key-file=")).exists(), "the front's key file is left behind"
    # without HTTP there is nothing to put a front before
    code, argv, _, _ = entrypoint([f"--model-repository={repository}", "--allow-http=false"])
    assert code == 0 and "--http-port=18000" not in argv


def test_entrypoint_refuses_to_start_without_its_front(entrypoint, repository, tmp_path):
    code, argv, stderr, _ = entrypoint([f"--model-repository={repository}"],
                                       env={"TRITONKIT_FRONT": str(tmp_path / "missing.py")})
    assert code == 67 and argv is None and "the HTTP front" in stderr and "hint:" in stderr


def test_entrypoint_reads_the_key_file_and_otherwise_locks_with_a_random_key(entrypoint, repository, tmp_path):
    key_file = tmp_path / "admin-key"
    key_file.write_text("0123456789abcdef0123\n")   # as `openssl rand -hex` or an editor writes it
    _, argv, stderr, _ = entrypoint([f"--model-repository={repository}"], env={"TRITONKIT_ADMIN_KEY_FILE": str(key_file)})
    assert {key for _, _, key in restricted(argv).values()} == {"0123456789abcdef0123"}
    assert str(key_file) in stderr
    keys = set()
    for _ in range(2):
        code, argv, stderr, _ = entrypoint([f"--model-repository={repository}"])
        assert code == 0 and "locked for everyone" in stderr
        (key,) = {key for _, _, key in restricted(argv).values()}
        assert re.fullmatch(r"[0-9a-f]{64}", key)
        keys.add(key)
    assert len(keys) == 2, "the random key is the same twice"


@pytest.mark.parametrize("key", ["short", "has:colon-0123456789", "has,comma-0123456789", "has=equals-0123456789"])
def test_entrypoint_refuses_a_key_the_flag_would_cut(entrypoint, repository, key):
    code, argv, stderr, _ = entrypoint([f"--model-repository={repository}"], env={"TRITONKIT_ADMIN_KEY": key})
    assert code == 64 and argv is None
    assert stderr.count("error:") == 1 and "openssl rand -hex 32" in stderr


def test_entrypoint_refuses_an_empty_repository(entrypoint, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "lost+found").mkdir()   # what a fresh filesystem holds
    code, argv, stderr, _ = entrypoint([f"--model-repository={tmp_path / 'empty'}"])
    assert code == 66 and argv is None
    assert "holds no model" in stderr and "hint:" in stderr
    # an object store is left to the readiness probe
    code, argv, _, _ = entrypoint(["--model-repository=s3://bucket/models"])
    assert code == 0 and argv[0] == "--model-repository=s3://bucket/models"


@pytest.mark.skipif(bool(list(pathlib.Path("/dev").glob("nvidia[0-9]*"))), reason="this machine has a GPU")
def test_entrypoint_says_plainly_when_gpu_models_meet_no_gpu(entrypoint, repository):
    config = repository / "m_fp32" / "config.pbtxt"
    config.write_text(config.read_text().replace("KIND_CPU", "KIND_GPU"))
    code, argv, stderr, _ = entrypoint([f"--model-repository={repository}", "--model-control-mode=none"])
    assert code == 65 and argv is None and "m_fp32" in stderr and "KIND_GPU" in stderr
    # explicit model control may load only the CPU models: left to Triton
    code, _, _, _ = entrypoint([f"--model-repository={repository}", "--model-control-mode=explicit"])
    assert code == 0


# --- the probe's requests -----------------------------------------------------------------------------------------

def test_probe_builds_a_valid_request_from_a_models_config():
    probe = load_probe()
    config = {"max_batch_size": 8, "input": [
        {"name": "input_ids", "data_type": "TYPE_INT64", "dims": [-1]},
        {"name": "attention_mask", "data_type": "TYPE_INT64", "dims": [-1]},
        {"name": "image", "data_type": "TYPE_FP32", "dims": [1, 28, 28]},
        {"name": "TEXT", "data_type": "TYPE_STRING", "dims": [1]},
        {"name": "extra", "data_type": "TYPE_FP32", "dims": [3], "optional": True}]}
    inputs = {i["name"]: i for i in probe.inference_body(config)["inputs"]}
    assert set(inputs) == {"input_ids", "attention_mask", "image", "TEXT"}       # optional inputs left out
    assert inputs["input_ids"] == {"name": "input_ids", "shape": [1, probe.VARIABLE_DIM], "datatype": "INT64",
                                   "data": [1] * probe.VARIABLE_DIM}             # a valid id and a full mask
    assert inputs["image"]["shape"] == [1, 1, 28, 28] and len(inputs["image"]["data"]) == 784
    assert inputs["TEXT"]["datatype"] == "BYTES" and inputs["TEXT"]["data"] == [probe.TEXT]
    unbatched = probe.inference_body({"max_batch_size": 0, "input": [{"name": "x", "data_type": "TYPE_FP16",
                                                                      "dims": [2, -1]}]})
    assert unbatched["inputs"][0]["shape"] == [2, probe.VARIABLE_DIM]


def test_probe_knows_which_models_run_in_a_python_stub():
    probe = load_probe()
    assert probe.in_stub({"backend": "python"})
    assert probe.in_stub({"backend": "onnxruntime", "runtime": "model.py"})        # the kit's embedded backend
    assert not probe.in_stub({"backend": "onnxruntime", "runtime": ""})           # the image's native backend
    assert not probe.in_stub({"platform": "ensemble"})


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
@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_manifests_render(folder):
    documents = render(folder)
    assert documents
    for doc in documents:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc


@needs_kubectl
@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", ["1.27", "1.30", "1.37"])
def test_manifests_validate_against_the_kubernetes_schemas(folder, version):
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install '.[test]')")
    checked = 0
    for doc in render(folder):
        if doc["apiVersion"].startswith("serving.kserve.io/"):
            continue   # a CRD: no schema offline (KServe's kinds are checked by the tests below)
        try:
            kubernetes_validate.validate(doc, version, strict=True)   # strict: an unknown field is an error
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{folder}: {doc['kind']}/{doc['metadata']['name']} on Kubernetes {version}: {e.message}")
        checked += 1
    assert checked or folder == "kserve"


# The Pod Security Standards, profile "restricted" (kubernetes.io/docs/concepts/security/pod-security-standards/),
# which includes "baseline". What the admission controller checks, field by field.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}


def restricted_violations(pod: dict) -> list[str]:
    """What in a pod spec the Pod Security "restricted" profile refuses; [] when it is admitted."""
    problems = []
    pod_context = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field}: true")
    for volume in pod.get("volumes", []):
        kind = set(volume) - {"name"}
        if not kind <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {sorted(kind)} not allowed")
    if pod_context.get("seccompProfile", {}).get("type") == "Unconfined":
        problems.append("pod seccompProfile Unconfined")
    if pod_context.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    containers = pod.get("initContainers", []) + pod.get("containers", [])
    for c in containers:
        context, name = c.get("securityContext", {}), c["name"]
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp}, not RuntimeDefault or Localhost")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


def test_the_pod_security_check_can_fail():
    good = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False,
                                                             "capabilities": {"drop": ["ALL"]}}}]}
    assert restricted_violations(good) == []
    bad = {"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
           "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}],
                           "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}, "runAsUser": 0}}]}
    assert len(restricted_violations(bad)) == 9


@needs_kubectl
@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_every_pod_meets_pod_security_restricted_with_a_read_only_root(folder):
    documents = render(folder)
    pods = pod_templates(documents)
    assert pods, f"{folder} runs no pod"
    for name, pod in pods:
        assert restricted_violations(pod) == [], name
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, f"{name}: {container['name']}"
        if name.startswith("ServingRuntime/"):
            (service,) = [d for d in documents if d["kind"] == "InferenceService"]
            assert service["spec"]["predictor"]["automountServiceAccountToken"] is False
        else:
            assert pod["automountServiceAccountToken"] is False, f"{name} gets a service-account token"
        if name in ("Deployment/triton", "ServingRuntime/triton-kit"):
            # the server's only writable places: emptyDirs at /tmp and /dev/shm
            (container,) = pod["containers"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/dev/shm"]]


@needs_kubectl
@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "overlays/pvc"])
def test_triton_deployment_probes_ports_and_shutdown(overlay):
    documents = render(overlay)
    pod = triton_pod(overlay)
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == kit_ports()
    url = f"http://127.0.0.1:{ports['http']}"
    # ready: the server ready AND at least one model; live: the process and every Python stub answer
    assert container["readinessProbe"]["exec"]["command"] == ["python3", IMAGE_PROBE, "ready", "--url", url]
    assert container["livenessProbe"]["exec"]["command"] == ["python3", IMAGE_PROBE, "live", "--url", url]
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert pod["securityContext"]["runAsUser"] == 1000   # the image's USER
    # preStop pause, then Triton drains; the grace period covers both
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep" and int(pause[1]) > 0
    assert pod["terminationGracePeriodSeconds"] > int(pause[1]) + int(flags(container["args"])["exit-timeout-secs"])
    service = find(documents, "Service", "triton")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == kit_ports()
    hpa = find(documents, "HorizontalPodAutoscaler", "triton")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    assert container["resources"]["requests"]["cpu"]   # CPU utilization is measured against the request


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector with matchLabels (and In expressions) matches `labels`."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    return all(e["operator"] == "In" and labels.get(e["key"]) in e["values"]
               for e in selector.get("matchExpressions", []))


@needs_kubectl
@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/pvc"])
def test_disruption_budget_and_headless_service_cover_the_server_pods(overlay):
    documents = render(overlay)
    deployment = find(documents, "Deployment", "triton")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = find(documents, "PodDisruptionBudget", "triton")
    assert selects(pdb["spec"]["selector"], labels) and pdb["spec"]["maxUnavailable"] == 1
    hpa = find(documents, "HorizontalPodAutoscaler", "triton")
    assert hpa["spec"]["minReplicas"] >= 2 and deployment["spec"]["replicas"] >= 2   # a drain keeps one serving
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    headless = find(documents, "Service", "triton-headless")
    assert headless["spec"]["clusterIP"] == "None" and selects({"matchLabels": headless["spec"]["selector"]}, labels)
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]}["grpc"] == kit_ports()["grpc"]


@needs_kubectl
def test_network_policy_opens_inference_to_the_namespace_and_metrics_to_prometheus_only():
    documents = render("overlays/cpu")
    labels = find(documents, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    policy = find(documents, "NetworkPolicy", "triton")
    assert selects(policy["spec"]["podSelector"], labels) and policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {tuple(sorted(p["port"] for p in rule["ports"])): rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(rules) == {("grpc", "http"), ("metrics",)}
    assert {"podSelector": {}} in rules[("grpc", "http")]   # every pod of the namespace, not only Triton's
    (prometheus,) = rules[("metrics",)]
    assert set(prometheus) == {"namespaceSelector", "podSelector"}   # both: Prometheus's pods in its namespace
    assert selects(prometheus["podSelector"], {"app.kubernetes.io/name": "prometheus"})
    assert not selects(prometheus["podSelector"], labels)


@needs_kubectl
@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_baked_overlays_serve_the_images_repository(overlay):
    documents = render(overlay)
    assert not [d for d in documents if d["kind"] == "PersistentVolumeClaim"]
    (container,) = triton_pod(overlay)["containers"]
    repository = flags(container["args"])["model-repository"]
    assert repository == "/models" and repository in copied_to(DOCKER / "Dockerfile")
    assert all(m["mountPath"] != repository for m in container["volumeMounts"]), "a volume hides the baked copy"
    assert "model-repository" not in {v["name"] for v in triton_pod(overlay)["volumes"]}


def copied_to(dockerfile: pathlib.Path) -> set[str]:
    return {shlex.split(args)[-1].rstrip("/") for args in instruction(dockerfile, "COPY")}


@needs_kubectl
def test_pvc_overlay_serves_what_the_fill_job_writes():
    documents, fill = render("overlays/pvc"), render("fill-pvc")
    claim = find(documents, "PersistentVolumeClaim", "triton-model-repository")
    assert find(fill, "PersistentVolumeClaim", "triton-model-repository") == claim   # the same object
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]   # what every default storage class binds
    pod = triton_pod("overlays/pvc")
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == flags(container["args"])["model-repository"])
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"] and mount["readOnly"]
    # RWO attaches to one node: the replicas are kept together
    (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["labelSelector"], find(documents, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"])
    job = find(fill, "Job", "triton-fill-model-repository")["spec"]["template"]["spec"]
    (copier,) = job["containers"]
    (target,) = copier["volumeMounts"]
    assert next(v for v in job["volumes"] if v["name"] == target["name"])["persistentVolumeClaim"]["claimName"] == \
        claim["metadata"]["name"]
    script = copier["command"][-1]
    # copies the image's repository into the folder the server mounts (subPath), swapped in whole
    assert "/models" in script and f"mv {target['mountPath']}/{mount['subPath']}.new {target['mountPath']}/{mount['subPath']}" in script
    assert copier["image"] == container["image"]


@needs_kubectl
def test_fill_job_script_copies_and_swaps_the_repository(tmp_path):
    (copier,) = find(render("fill-pvc"), "Job", "triton-fill-model-repository")["spec"]["template"]["spec"]["containers"]
    script = copier["command"][-1].replace("/models", str(tmp_path / "image")).replace("/target", str(tmp_path / "vol"))
    (tmp_path / "vol" / "model_repository" / "old_model").mkdir(parents=True)
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 66 and "no model" in result.stderr   # an image without models changes nothing
    assert (tmp_path / "vol" / "model_repository" / "old_model").is_dir()
    (tmp_path / "image" / "m_fp32" / "1").mkdir(parents=True)
    (tmp_path / "image" / "m_fp32" / "config.pbtxt").write_text('name: "m_fp32"\n')
    (tmp_path / "image" / "m_fp32" / "1" / "model.onnx").write_bytes(b"onnx")
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "vol").iterdir()) == ["model_repository"]
    assert sorted(p.name for p in (tmp_path / "vol" / "model_repository").iterdir()) == ["m_fp32"]
    assert (tmp_path / "vol" / "model_repository" / "m_fp32" / "1" / "model.onnx").read_bytes() == b"onnx"


@needs_kubectl
def test_smoke_job_checks_every_model_through_the_service():
    (container,) = find(render("smoke"), "Job", "triton-smoke")["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["python3", IMAGE_PROBE, "smoke"]
    service = find(render("overlays/cpu"), "Service", "triton")
    assert command[command.index("--url") + 1] == f"http://{service['metadata']['name']}:{kit_ports()['http']}"
    assert float(command[command.index("--wait") + 1]) > 0
    assert container["image"] == triton_pod("overlays/cpu")["containers"][0]["image"]


@needs_kubectl
def test_key_secret_is_mounted_where_the_entrypoint_reads_it():
    for name, pod in pod_templates(render("overlays/cpu")) + pod_templates(render("kserve")):
        (container,) = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        key_file = pathlib.PurePosixPath(env["TRITONKIT_ADMIN_KEY_FILE"])
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(key_file.parent))
        secret = next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]
        assert secret["secretName"] == "triton-admin-key" and mount["readOnly"], name
        assert [item["path"] for item in secret["items"]] == [key_file.name]
        assert secret["optional"] is True   # without it the entrypoint locks the APIs with a random key


@needs_kubectl
def test_images_carry_the_tag_the_build_sets():
    tag = compose()["x-triton"]["image"].split(":", 1)[1]
    assert tag.startswith("${TRITON_KIT_TAG:-")
    default = tag.removeprefix("${TRITON_KIT_TAG:-").removesuffix("}")
    assert compose()["x-locust"]["image"] == f"triton-kit-locust:${{TRITON_KIT_TAG:-{default}}}"
    for folder in KUSTOMIZATIONS:
        documents = render(folder)
        images = {c["image"] for _, pod in pod_templates(documents) for c in pod["containers"]}
        assert images, folder
        for image in images:
            assert image.rsplit(":", 1)[1] == default, f"{folder}: {image}"
    assert "latest" not in (K8S / "components" / "images" / "kustomization.yaml").read_text().split("#")[0]


@needs_kubectl
def test_kserve_runs_the_kits_image_not_the_stock_runtime():
    documents = render("kserve")
    runtime = find(documents, "ServingRuntime", "triton-kit")
    service = find(documents, "InferenceService", "triton-kit")
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["runtime"] == runtime["metadata"]["name"]
    assert "triton" in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    (container,) = runtime["spec"]["containers"]
    # the image that has `tokenizers` for the raw-text ensemble and the entrypoint that locks the admin APIs
    assert container["image"] == triton_pod("overlays/cpu")["containers"][0]["image"]
    assert flags(container["args"])["model-repository"] in copied_to(DOCKER / "Dockerfile")
    assert "storageUri" not in model   # the repository baked into that image


@needs_kubectl
@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "overlays/pvc"])
def test_cpus_are_instances_times_intra_op_threads(overlay):
    template = find(render(overlay), "Deployment", "triton")["spec"]["template"]
    build_flags = template["metadata"]["annotations"]["triton-kit/build-flags"]
    match = re.fullmatch(r"--instances (\d+) --threads (\d+)", build_flags)
    assert match, f"{overlay}: triton-kit/build-flags is `{build_flags}`"
    serving = ServingConfig(instances=int(match[1]), intra_op_threads=int(match[2]))
    config = parse_text(to_text(build_config("digits_fp32", resolve_spec("digits"), serving)))
    threads = config.instance_group[0].count * int(config.parameters["intra_op_thread_count"].string_value)
    resources = template["spec"]["containers"][0]["resources"]
    assert cpus(resources["requests"]["cpu"]) == cpus(resources["limits"]["cpu"]) == threads


@needs_kubectl
def test_gpu_overlay_asks_for_a_gpu_with_the_same_image():
    cpu, gpu = (triton_pod(overlay) for overlay in ("overlays/cpu", "overlays/gpu"))
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
