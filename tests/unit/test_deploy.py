"""The overlay `python -m loadtests deploy` writes, from a hand-made plan line: it renders with `kubectl kustomize`
over docker/k8s/base, validates against the Kubernetes schemas (kubernetes-validate, offline), loads only the
chosen model (and its raw-text ensemble's parts), and its sizes are the plan's. KEDA's ScaledObject and KServe's
InferenceService are custom resources whose schemas are not bundled: they are checked for structure only."""

import json
import shutil
import subprocess

import pytest
import yaml

from loadtests.rollout.deploy import models_to_load, server_args, server_command, write_overlay
from loadtests.rollout.plan import plan_variant

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH: the overlay was not rendered")
KUBERNETES_VERSION = "1.30"  # the oldest release still supported upstream when this was written

LINE = plan_variant("minilm_int8", throughput_low=140.0, batch_size=1, instances=1, threads=2,
                    rss_per_instance=300 * 1024 ** 2, target_qps=2000, headroom=0.3, users=4)


def render(folder) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def find(documents, kind):
    (match,) = [d for d in documents if d["kind"] == kind]
    return match


@pytest.fixture(scope="module")
def overlay(tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy") / "deploy"
    models = models_to_load("minilm_int8", {"text_endpoint": {"model": "minilm_int8_text",
                                                              "tokenizer": "minilm_tokenizer",
                                                              "postprocess": "minilm_postprocess"}})
    write_overlay(out, models, LINE, canary_percent=10, queue_ms=5)
    return out


def test_server_args_replace_load_everything_with_the_chosen_models():
    command = server_command()
    # the entrypoint (docker/triton/entrypoint.sh) adds the locked APIs; the image loads everything, unchangeably
    assert command[0].startswith("--") and "--model-control-mode=none" in command
    args = server_args(["a", "b"])
    assert [a for a in args if a.startswith("--load-model")] == ["--load-model=a", "--load-model=b"]
    assert args.count("--model-control-mode=explicit") == 1
    assert set(command) - {"--model-control-mode=none"} <= set(args)  # every other flag of the image is kept
    assert models_to_load("m", {}) == ["m"] and models_to_load("m", {"text_endpoint": {"model": "t"}}, False) == ["m"]


@needs_kubectl
def test_overlay_renders_validates_and_matches_the_plan(overlay):
    import kubernetes_validate

    documents = render(overlay)
    for doc in documents:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    broken = find(documents, "Deployment") | {"spec": {"replicas": "many"}}
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    deployment = find(documents, "Deployment")
    assert deployment["metadata"]["name"] == "triton" and deployment["spec"]["replicas"] == LINE.replicas == 21
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    loaded = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--load-model")]
    assert loaded == ["minilm_int8", "minilm_tokenizer", "minilm_postprocess", "minilm_int8_text"]
    resources = container["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "2", "memory": f"{LINE.memory_mib}Mi"}
    assert LINE.memory_mib == 450  # 300 MiB x 1.5
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["triton-kit/build-flags"] == "--instances 1 --threads 2"  # 1 x 2 = the 2 CPUs
    hpa = find(documents, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (LINE.replicas, LINE.max_replicas)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "triton"
    # the base's other resources come through unchanged
    assert {d["kind"] for d in documents} >= {"Service", "Deployment", "HorizontalPodAutoscaler"}
    assert json.loads((overlay / "plan.json").read_text())["replicas"] == LINE.replicas


@needs_kubectl
def test_keda_component_replaces_the_cpu_hpa(tmp_path):
    write_overlay(tmp_path, ["minilm_int8"], LINE, queue_ms=5, keda=True)
    documents = render(tmp_path)
    assert not [d for d in documents if d["kind"] == "HorizontalPodAutoscaler"]
    scaled = find(documents, "ScaledObject")  # a KEDA custom resource: structure only, no schema here
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["spec"]["scaleTargetRef"]["name"] == "triton"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (21, LINE.max_replicas)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "5000"
    assert 'nv_inference_queue_duration_us{model="minilm_int8"}' in trigger["metadata"]["query"]
    assert find(documents, "Deployment")["spec"]["replicas"] == 21


def test_kserve_canary_serves_only_the_chosen_model(overlay):
    doc = yaml.safe_load((overlay / "kserve" / "inferenceservice.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) == ("serving.kserve.io/v1beta1",
                                                                       "InferenceService", "triton-kit")
    predictor = doc["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10 and predictor["minReplicas"] == 21
    args = predictor["model"]["args"]
    assert [a for a in args if a.startswith("--load-model")] == ["--load-model=minilm_int8"]
    assert "--model-control-mode=explicit" in args
    assert predictor["model"]["resources"]["limits"] == {"cpu": "2", "memory": "450Mi"}
