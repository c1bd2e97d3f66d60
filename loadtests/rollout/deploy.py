"""A Kustomize overlay that deploys one variant, sized from the capacity plan (loadtests/rollout/plan.py).

  paths = write_overlay(out, models=["minilm_int8"], line=<plan line>, canary_percent=10)

Written to `out` (the base is docker/k8s/base, its resource names unchanged: in a checkout referenced by a
relative path; from an installed wheel copied, with the folders it refers to, into `out/k8s/`, so the overlay does
not point into site-packages):
- kustomization.yaml: the base, plus patches: deployment.yaml (replicas, the server's arguments loading only the
  chosen models, CPU and memory requests = limits from the plan, the build flags as an annotation) and hpa.yaml
  (min = the plan's replicas, max = the replicas for twice the target);
- components/queue-time/: an optional Kustomize component, listed under `components:` with `keda` (or by hand): a
  KEDA ScaledObject on Triton's mean queue time per request, through KEDA's Prometheus scaler; it removes the CPU
  HPA, since KEDA makes its own and two autoscalers on one Deployment fight;
- kserve/inferenceservice.yaml: the InferenceService of docker/k8s/kserve with the chosen model, the plan's
  resources and `canaryTrafficPercent`: applied over the running one, KServe sends that share of traffic to the
  new variant beside the current revision (serverless mode; raw deployment mode has no canary split);
- plan.json: the plan line the overlay was sized from.

The server's arguments are docker/Dockerfile's CMD with `--load-model=*` replaced by one `--load-model=` per
model (explicit model control; strict readiness then waits for exactly these). ONNX Runtime's threads are the
config's (`intra_op_thread_count`, set at build time): the plan's cores are instances x those threads, so the pod
gets exactly the cores its threads use; to size the pod differently, rebuild with the flags in the annotation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil

from builder.core.errors import BuilderError
from builder.core.files import atomic_write
from .plan import PlanLine

# docker/'s Kubernetes files and Dockerfile: in a checkout `deploy_templates` is a link to docker/, and the wheel
# ships their copies as package data (pyproject.toml), so deploy works outside a checkout too
TEMPLATES = (pathlib.Path(__file__).parent / "deploy_templates").resolve()
BASE = TEMPLATES / "k8s" / "base"
DOCKERFILE = TEMPLATES / "Dockerfile"
KSERVE = TEMPLATES / "k8s" / "kserve" / "inferenceservice.yaml"
DEPLOYMENT, CONTAINER, HPA = "triton", "triton", "triton"  # docker/k8s/base's names
DEFAULT_CANARY_PERCENT = 10
DEFAULT_PROMETHEUS = "http://prometheus.monitoring.svc:9090"


class DeployError(BuilderError):
    """An overlay cannot be written: no variant to deploy, an unreadable base or Dockerfile."""


def server_command(dockerfile: pathlib.Path = DOCKERFILE) -> list[str]:
    """The image's CMD (exec form) as a list: the flags its entrypoint hands to tritonserver. Only a CMD at the
    start of a line counts (HEALTHCHECK's own `CMD` is indented under it)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in text.splitlines():
        if line.upper().startswith("CMD "):
            try:
                return json.loads(line.strip()[4:])
            except json.JSONDecodeError as e:
                raise DeployError(f"{dockerfile}: CMD is not in exec form (a JSON list)") from e
    raise DeployError(f"{dockerfile} has no CMD", hint="the overlay takes the server's flags from it")


def server_args(models: list[str], dockerfile: pathlib.Path = DOCKERFILE) -> list[str]:
    """The image's command with explicit model control loading only `models`."""
    command = [a for a in server_command(dockerfile) if not a.startswith(("--load-model", "--model-control-mode"))]
    return command + ["--model-control-mode=explicit"] + [f"--load-model={m}" for m in models]


def models_to_load(model: str, entry: dict, text_endpoint: bool = True) -> list[str]:
    """The chosen model and, with `text_endpoint` and one in its build record, its raw-text ensemble's parts."""
    models = [model]
    endpoint = entry.get("text_endpoint") or {}
    if text_endpoint and endpoint.get("model"):
        models += [endpoint[k] for k in ("tokenizer", "postprocess", "model") if endpoint.get(k)]
    return models


def _yaml(data, comment: str = "") -> str:
    import yaml

    head = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    return head + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def queue_query(model: str) -> str:
    """Mean queue time per request (µs) of `model` over the last minute, across pods."""
    return (f'sum(rate(nv_inference_queue_duration_us{{model="{model}"}}[1m])) / '
            f'clamp_min(sum(rate(nv_inference_request_success{{model="{model}"}}[1m])), 1)')


def write_overlay(out: pathlib.Path, models: list[str], line: PlanLine, canary_percent: int = DEFAULT_CANARY_PERCENT,
                  queue_ms: float = 5.0, prometheus_url: str = DEFAULT_PROMETHEUS, replicas: int | None = None,
                  keda: bool = False, base: pathlib.Path = BASE,
                  dockerfile: pathlib.Path = DOCKERFILE) -> list[pathlib.Path]:
    """Write the overlay (module docstring) for `models` (the first is the planned variant) sized by the plan
    `line`; `replicas` overrides the plan's (e.g. 1 to re-measure one replica); `keda` turns the queue-time
    component on. Returns the files written."""
    if not 0 < canary_percent <= 100:
        raise DeployError(f"--canary-percent must be in 1..100, got {canary_percent}")
    if not line.memory_mib:
        raise DeployError(f"no measured memory per instance for `{models[0]}`: the pod's memory cannot be sized",
                          hint="run the load test with its footprint step (the default; not --no-footprint), or "
                               f"`python -m loadtests footprint --models {models[0]}`")
    replicas = replicas or line.replicas
    max_replicas = max(replicas, line.max_replicas)
    cpu, memory = str(line.cores), f"{line.memory_mib}Mi"
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    flags = f"--instances {line.instances} --threads {line.threads}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "components" / "queue-time").mkdir(parents=True, exist_ok=True)
    (out / "kserve").mkdir(exist_ok=True)
    sized = (f"Sized by `python -m loadtests plan` for {line.target_qps:g} requests/s: {line.capacity_rps:g} "
             f"requests/s per replica (lower bound of the measured interval) at {1 - line.headroom:.0%}.")
    base_reference = os.path.relpath(base, out)
    if not in_checkout(base):  # an installed kit: the base (and what it refers to) travels with the overlay
        base_reference = vendor_base(base, out)
    files = {
        out / "kustomization.yaml": _yaml(overlay_kustomization(base_reference, keda), (
            f"`{models[0]}` on docker/k8s/base:  kubectl apply -k {out}\n{sized}\n"
            + ("Scaling: KEDA on Triton's queue time (components/queue-time; needs KEDA in the cluster)." if keda
               else "Scaling: the base's HPA on CPU. For KEDA on Triton's queue time instead, add\n"
                    "  components: [components/queue-time]\n(or write the overlay with `--keda`).")
            + "\nWritten by `python -m loadtests deploy`; plan.json holds the plan line.")),
        out / "deployment.yaml": _yaml({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": DEPLOYMENT},
            "spec": {"replicas": replicas, "template": {
                "metadata": {"annotations": {"triton-kit/build-flags": flags, "triton-kit/models": ",".join(models)}},
                "spec": {"containers": [{"name": CONTAINER, "args": server_args(models, dockerfile),
                                         "resources": resources}]}}}},
            f"Only {', '.join(models)}; requests = limits = instances x threads CPUs ({flags}) and the measured "
            "memory with its margin.\nThe models were built with those flags: rebuild with others to size the pod "
            "differently."),
        out / "hpa.yaml": _yaml({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": HPA},
            "spec": {"minReplicas": replicas, "maxReplicas": max_replicas}},
            "min: the plan's replicas for the target; max: the replicas for twice the target."),
        **{out / "components" / "queue-time" / name: text for name, text in
           queue_time_component(models[0], replicas, max_replicas, queue_ms, prometheus_url).items()},
        out / "kserve" / "inferenceservice.yaml": kserve_manifest(models[0], replicas, max_replicas, resources,
                                                                  canary_percent),
        out / "plan.json": json.dumps(line.as_json() | {"models": models, "deployed_replicas": replicas}, indent=2) + "\n",
    }
    for path, text in files.items():
        atomic_write(path, text)
    return list(files)


def overlay_kustomization(base_reference: str, keda: bool) -> dict:
    """The overlay's kustomization: the base, patched by deployment.yaml and hpa.yaml, or with `keda` the
    queue-time component in place of the HPA."""
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [base_reference],
                     "patches": [{"path": "deployment.yaml"}, {"path": "hpa.yaml"}]}
    if keda:  # the component removes the HPA before the overlay's own patches run: nothing left to patch
        kustomization["components"] = ["components/queue-time"]
        kustomization["patches"] = [{"path": "deployment.yaml"}]
    return kustomization


def queue_time_component(model: str, replicas: int, max_replicas: int, queue_ms: float,
                         prometheus_url: str) -> dict[str, str]:
    """The optional Kustomize component `components/queue-time`: KEDA scaling on Triton's queue time of `model`
    instead of the base's CPU HPA. {file name: text}."""
    return {
        "kustomization.yaml": _yaml({
            "apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
            "resources": ["scaledobject.yaml"],
            "patches": [{"patch": _yaml({"$patch": "delete", "apiVersion": "autoscaling/v2",
                                         "kind": "HorizontalPodAutoscaler", "metadata": {"name": HPA}})}]},
            "Optional: scale on Triton's mean queue time per request (KEDA, Prometheus scaler). KEDA creates its "
            "own HPA, so the base's CPU HPA is removed."),
        "scaledobject.yaml": _yaml({
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": DEPLOYMENT},
            "spec": {"scaleTargetRef": {"name": DEPLOYMENT}, "minReplicaCount": replicas,
                     "maxReplicaCount": max_replicas, "cooldownPeriod": 300,
                     "triggers": [{"type": "prometheus", "metricType": "Value", "metadata": {
                         "serverAddress": prometheus_url, "query": queue_query(model),
                         "threshold": str(round(queue_ms * 1000))}}]}},
            f"Scale out when the mean queue time per request of {model} passes {queue_ms:g} ms "
            "(queueing grows before CPU saturates when batches are small).\nserverAddress: your Prometheus "
            "(it scrapes Triton's metrics port, see docker/k8s/base/service.yaml's annotations).")
    }


BASE_PARTS = ("base", "volume", "components/images")  # docker/k8s/base and the folders its kustomization names


def vendor_base(base: pathlib.Path, out: pathlib.Path) -> str:
    """Copy the base and its sibling folders into `out/k8s`, as they lie in docker/k8s; returns its reference."""
    shutil.rmtree(out / "k8s", ignore_errors=True)
    for part in BASE_PARTS:
        shutil.copytree(pathlib.Path(base).parent / part, out / "k8s" / part)
    return "k8s/base"


@dataclasses.dataclass(frozen=True)
class Choice:
    """The served model a deployment runs, why it was chosen, its plan line and its report row."""

    model: str
    why: str
    line: PlanLine
    row: object


def choose_variant(report: dict, model: str | None, variant: str | None, slo_p99_ms: float) -> Choice:
    """What `deploy` deploys from a report with plans: `variant` when given, else the cheapest variant meeting the
    SLO and budgets, else the recommended one; of the source `model` (needed when the run holds several). Raises
    DeployError when the source is unknown or the chosen variant has no plan line (it misses the SLO or a budget)."""
    sources = report["sources"]
    source = model or (sources[0] if len(sources) == 1 else None)
    if source not in sources:
        raise DeployError(f"pick a source model with --model: the run holds {', '.join(sources)}"
                          if source is None else f"unknown --model `{source}`", hint=f"known: {', '.join(sources)}")
    plan = report["plans"][source]
    lines = {line.model: line for line in plan.lines}
    chosen = variant or plan.cheapest or report["recommendations"][source]["model"]
    if chosen not in lines:
        raise DeployError(f"`{chosen}` does not meet p99 <= {slo_p99_ms:g} ms and the budgets in this run"
                          if chosen else report["recommendations"][source]["text"],
                          hint="planned variants: " + (", ".join(lines) or "none"))
    why = ("chosen with --variant" if variant else
           "cheapest meeting SLO and budgets" if chosen == plan.cheapest else "recommended")
    row = next(r for r in report["rows"] if r.triton_model == chosen)
    return Choice(chosen, why, lines[chosen], row)


def in_checkout(base: pathlib.Path) -> bool:
    """Whether `base` is docker/k8s/base of a source checkout (beside pyproject.toml), not a wheel's copy."""
    return (pathlib.Path(base).resolve().parents[2] / "pyproject.toml").is_file()


def kserve_manifest(model: str, replicas: int, max_replicas: int, resources: dict, canary_percent: int) -> str:
    """docker/k8s/kserve/inferenceservice.yaml with `model` only, the plan's sizing and a canary share."""
    import yaml

    doc = yaml.safe_load(KSERVE.read_text())
    predictor = doc["spec"]["predictor"]
    predictor |= {"minReplicas": replicas, "maxReplicas": max_replicas, "canaryTrafficPercent": canary_percent}
    args = [a for a in predictor["model"].get("args", []) if not a.startswith(("--load-model", "--model-control"))]
    predictor["model"]["args"] = args + ["--model-control-mode=explicit", f"--load-model={model}"]
    predictor["model"]["resources"] = resources
    return _yaml(doc, f"`{model}` beside the running revision: apply over the InferenceService `"
                      f"{doc['metadata']['name']}`\n(docker/k8s/kserve) and KServe sends {canary_percent} % of the "
                      "traffic to this revision, the rest to the last\nready one. Promote: set canaryTrafficPercent "
                      "to 100 (or remove it). Serverless mode only.\nKServe's stock Triton runtime has no "
                      "`tokenizers`: only the encoder is loaded here, not a raw-text ensemble.")
