"""Makes the vendored JSON schemas in this folder from KubeRay's CRDs (tests/test_deploy.py validates
docker/kuberay/*.yaml against them).

The upstream CRDs are about 1 MB each because every pod ``template`` embeds Kubernetes' whole PodTemplateSpec.
This keeps the ``v1`` openAPIV3Schema and:
- replaces each pod template subtree with an object that keeps unknown fields (the tests validate every pod
  template separately against kubernetes_validate's strict PodTemplateSpec schema);
- makes every other object with declared properties reject unknown fields, as the API server's strict field
  validation (``kubectl apply``'s default) does;
- turns OpenAPI's ``nullable`` into JSON Schema, and drops descriptions, CEL rules (not checkable here) and
  ``status`` (the operator writes it; a manifest that sets it is rejected).

Usage, from a checkout of github.com/ray-project/kuberay at the tag named in SOURCE:
    python docker/kuberay/schemas/trim_crd.py KUBERAY_CHECKOUT
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = {"repository": "https://github.com/ray-project/kuberay", "tag": "v1.7.0",
          "commit": "59d663aeec13760646da3db9c1cf8cfe883e30b7"}
CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
CRD_DIR = "ray-operator/config/crd/bases"
POD_TEMPLATE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                "$comment": "a PodTemplateSpec: validated separately against Kubernetes' own schema"}
DROPPED = {"description", "x-kubernetes-validations"}


def is_pod_template(schema: dict[str, Any]) -> bool:
    spec = schema.get("properties", {}).get("spec", {})
    return "containers" in spec.get("properties", {})


def trim(schema: Any) -> Any:
    if isinstance(schema, list):
        return [trim(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if is_pod_template(schema):
        return dict(POD_TEMPLATE)
    out = {key: trim(value) for key, value in schema.items() if key not in DROPPED}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in out
    if "properties" in out and not keeps_unknown:
        out["additionalProperties"] = False
    if "properties" in out:  # property *names* are not schemas: keep names such as "description" intact
        out["properties"] = {name: trim(sub) for name, sub in schema["properties"].items()}
    return out


def schema_for(kind: str, crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = dict(version["schema"]["openAPIV3Schema"])
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k != "status"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"{kind} (ray.io/v1) from {SOURCE['repository']} {SOURCE['tag']} ({SOURCE['commit']}), "
                    f"{CRD_DIR}/{CRDS[kind]}, trimmed by trim_crd.py",
        **trim(schema),
    }


def main(checkout: str) -> None:
    head = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head and head != SOURCE["commit"]:
        print(f"warning: {checkout} is at {head}, not {SOURCE['tag']} ({SOURCE['commit']}): update SOURCE",
              file=sys.stderr)
    for kind, name in CRDS.items():
        crd = yaml.safe_load((Path(checkout) / CRD_DIR / name).read_text())
        out = HERE / f"{kind.lower()}-v1.json"
        out.write_text(json.dumps(schema_for(kind, crd), indent=0, sort_keys=True) + "\n")
        print(f"{out.name}: {out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main(sys.argv[1])
