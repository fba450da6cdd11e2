#!/usr/bin/env python3
"""Checks the deployment artefacts, which cannot be applied on a machine without a
cluster or a container engine:

- the Dockerfile, with hadolint;
- the Kubernetes manifests in deploy/kubernetes, against the Kubernetes schemas
  (kubernetes-validate, strict: unknown fields are errors), including the two
  ConfigMaps the kustomization and the README make from cedargate.toml and policies/;
- that the pieces agree: the kustomization lists every manifest, the Deployment
  mounts the ConfigMaps that exist, runs the config file they hold, probes ports it
  declares; the Dockerfile and the Deployment name the same config path;
- the Istio wiring in deploy/istio, for the fields cedargate relies on (Istio's CRD
  schemas are not available offline, so this is a shape check, not a schema check).

Run by scripts/test.sh; exits non-zero on the first failure.
"""
import pathlib
import subprocess
import sys

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
ISTIO = ROOT / "deploy" / "istio"
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]

checks = 0


def check(condition, message):
    global checks
    checks += 1
    if not condition:
        sys.exit(f"check-deploy: {message}")


def load_all(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def configmap(name, files):
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "cedargate-system"},
        "data": {f.name: f.read_text() for f in files},
    }


# The Dockerfile.
hadolint = pathlib.Path(sys.executable).parent / "hadolint"
result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
check(result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}")

# The manifests and the ConfigMaps made from the repository's files.
kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
listed = set(kustomization["resources"])
on_disk = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
check(listed == on_disk, f"kustomization resources {sorted(listed)} differ from the manifests {sorted(on_disk)}")
documents = [doc for name in sorted(listed) for doc in load_all(K8S / name)]
generated = [configmap(g["name"], [K8S / f for f in g["files"]]) for g in kustomization["configMapGenerator"]]
policy_files = [p for p in sorted((ROOT / "policies").iterdir()) if not p.name.endswith(".test.toml")]
generated.append(configmap("cedargate-policies", policy_files))
for doc in documents + generated:
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            check(False, f"{doc['kind']}/{doc['metadata']['name']} against Kubernetes {version}: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            check(False, f"no schema for {doc['kind']} {doc['apiVersion']} in Kubernetes {version}: {e}")

by_kind = {doc["kind"]: doc for doc in documents}
deployment = by_kind["Deployment"]
pod = deployment["spec"]["template"]["spec"]
container = pod["containers"][0]
configmaps = {g["metadata"]["name"] for g in generated}
for volume in pod["volumes"]:
    if "configMap" in volume:
        check(volume["configMap"]["name"] in configmaps, f"volume {volume['name']} names an unknown ConfigMap")
mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
config_arg = container["args"][container["args"].index("--config") + 1]
check(config_arg == f"{mounts['config']}/cedargate.toml", f"--config {config_arg} is not in the config mount")
config = (K8S / "cedargate.toml").read_text()
check(f'dir = "{mounts["policies"]}"' in config, "cedargate.toml's policies.dir is not the policies mount")
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
    check(container[probe]["grpc"]["port"] == ports["grpc"], f"{probe} does not probe the gRPC port")
check(container["securityContext"]["readOnlyRootFilesystem"] is True, "the root filesystem must be read-only")
check(pod["securityContext"]["runAsNonRoot"] is True, "the pod must run as non-root")
check(f'"{config_arg}"' in (ROOT / "Dockerfile").read_text(), "the Dockerfile's CMD names another config path")
service_ports = {p["targetPort"] for p in by_kind["Service"]["spec"]["ports"]}
check(service_ports <= set(ports), "the Service targets a port the container does not declare")
selector = deployment["spec"]["selector"]["matchLabels"]
for kind in ("Service", "PodDisruptionBudget"):
    spec = by_kind[kind]["spec"]
    check((spec.get("selector", {}).get("matchLabels") or spec.get("selector")) == selector, f"{kind} selects other pods")

# The Istio wiring.
mesh = yaml.safe_load((ISTIO / "mesh-config.yaml").read_text())["spec"]["meshConfig"]
provider = mesh["extensionProviders"][0]
grpc = provider["envoyExtAuthzGrpc"]
check(grpc["failOpen"] is False, "the Istio provider must not fail open")
check(grpc["port"] == ports["grpc"], "the Istio provider calls another port")
check(grpc["service"].startswith(f"{deployment['metadata']['name']}.{kustomization['namespace']}."), "provider service")
check(mesh["pathNormalization"]["normalization"] in ("MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"), "path normalization")
policy = yaml.safe_load((ISTIO / "authorization-policy.yaml").read_text())
check(policy["kind"] == "AuthorizationPolicy" and policy["spec"]["action"] == "CUSTOM", "AuthorizationPolicy CUSTOM")
check(policy["spec"]["provider"]["name"] == provider["name"], "the AuthorizationPolicy names another provider")
patch = yaml.safe_load((ISTIO / "envoyfilter-ext-authz.yaml").read_text())["spec"]["configPatches"][0]["patch"]
typed = patch["value"]["typed_config"]
check(typed["include_peer_certificate"] is True and typed["encode_raw_headers"] is True, "EnvoyFilter settings")

print(f"check-deploy: {checks} checks passed (Dockerfile, {len(documents) + len(generated)} Kubernetes objects "
      f"against {', '.join(KUBERNETES_VERSIONS)}, Istio wiring)")
