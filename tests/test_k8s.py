"""Offline checks of the Kubernetes deployment (k8s/, Dockerfile): no cluster or Docker needed.

Every overlay is rendered with `kubectl kustomize` (kubectl bundling kustomize v5 or newer, the
version the overlays are written for; older ones reject or misread them); `ray.io/v1` objects are
validated against the KubeRay v1.7.0 CRD schemas shipped in k8s/schemas/ (closed: an undeclared
field is an error), core kinds against the upstream Kubernetes schemas of `kubernetes-validate`, and
the pieces that must agree across files (Ray version, entrypoints and sweep files, service names and
MLflow's allowed hosts, Secret references, NetworkPolicy selectors) are checked against each other.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import jsonschema
import kubernetes_validate
import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
OVERLAYS = {"dev": K8S / "overlays" / "dev", "gpu": K8S / "overlays" / "gpu"}
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
CRD_DIR = K8S / "schemas" / "kuberay-v1.7.0"
KUBERNETES_VERSION = "1.32.0"
IGMU_IMAGE = "igmu"
RAY_NODE_SELECTOR = {"ray.io/is-ray-node": "yes"}
SERVE_APP = {"name": "judges", "import_path": "igmu.serve.app:build_app", "route_prefix": "/judges"}
POSTGRES_SECRET = ("igmu-postgres", "password")
KUSTOMIZE_MAJOR = 5


# --- helpers --------------------------------------------------------------------------------------

class KustomizeError(RuntimeError):
    pass


@functools.cache
def kubectl() -> str:
    """kubectl's path, once its bundled kustomize is known to be new enough: fail rather than skip, so
    a machine without it cannot pass these checks by not running them."""
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(f"kubectl not found on PATH: the k8s/ overlays are rendered with `kubectl kustomize`, "
                    f"which needs kubectl with Kustomize v{KUSTOMIZE_MAJOR} or newer", pytrace=False)
    version = subprocess.run([path, "version", "--client"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"^Kustomize Version: v(\d+)\.", version, re.M)
    if not match or int(match.group(1)) < KUSTOMIZE_MAJOR:
        found = f"Kustomize v{match.group(1)}" if match else "no Kustomize version (kubectl before 1.24)"
        pytest.fail(f"{path} reports {found}; the k8s/ overlays need Kustomize v{KUSTOMIZE_MAJOR} or newer",
                    pytrace=False)
    return path


def kustomize(folder: Path) -> list[dict]:
    """The objects `kubectl kustomize folder` emits."""
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {folder}: {result.stderr.strip()}")
    return [o for o in yaml.safe_load_all(result.stdout) if o]


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, kustomize(OVERLAYS[request.param])


def only(objects, kind, name=None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def ray_cluster_specs(obj: dict) -> list[dict]:
    if obj["apiVersion"] != "ray.io/v1":
        return []
    spec = obj["spec"]
    return [s for s in (spec if obj["kind"] == "RayCluster" else spec.get("rayClusterConfig") or
                        spec.get("rayClusterSpec"),) if s]


def pod_templates(obj: dict) -> list[dict]:
    """Every pod template an object creates pods from."""
    if obj["kind"] in ("Deployment", "StatefulSet"):
        return [obj["spec"]["template"]]
    templates = []
    for cluster in ray_cluster_specs(obj):
        templates.append(cluster["headGroupSpec"]["template"])
        templates += [group["template"] for group in cluster.get("workerGroupSpecs", [])]
    return templates


def containers(objects) -> list[dict]:
    return [c for o in objects for t in pod_templates(o) for c in t["spec"].get("containers", [])]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned_ray_version() -> str:
    deps = [d for d in pyproject()["project"]["dependencies"] if re.match(r"ray\b", d)]
    assert len(deps) == 1, deps
    match = re.fullmatch(r"ray(\[[^\]]*\])?==([0-9][0-9.]*)", deps[0].replace(" ", ""))
    assert match, f"Ray must be pinned exactly (ray[...]==X.Y.Z) so the image can match it: {deps[0]}"
    return match.group(2)


def closed(schema):
    """The schema with every object that declares properties closed to other fields, as the API
    server's pruning effectively does (it drops them silently; here they are errors)."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


_VALIDATORS: dict[str, jsonschema.Validator] = {}


def crd_validator(kind: str) -> jsonschema.Validator:
    if kind not in _VALIDATORS:
        crd = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        _VALIDATORS[kind] = jsonschema.Draft7Validator(closed(version["schema"]["openAPIV3Schema"]))
    return _VALIDATORS[kind]


def crd_errors(obj: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in crd_validator(obj["kind"]).iter_errors(obj)]


def core_errors(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{'/'.join(map(str, err.path))}: {err.message}"]
    return []


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# --- rendering ------------------------------------------------------------------------------------

def test_overlays_render_to_uniquely_named_namespaced_objects(rendered):
    name, objects = rendered
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), f"{name}: duplicate objects"
    assert {"RayCluster", "RayJob", "RayService", "Deployment", "StatefulSet", "Service",
            "PersistentVolumeClaim", "NetworkPolicy", "Namespace"} <= {k for k, _ in keys}
    namespace = only(objects, "Namespace")[0]["metadata"]["name"]
    assert all(o["metadata"].get("namespace") == namespace for o in objects if o["kind"] != "Namespace")


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_overlay_patch_targets_an_object_of_the_base(overlay):
    """kustomize applies a patch whose target matches nothing as a silent no-op, so a renamed base
    object would quietly drop an overlay's changes."""
    base = {(o["kind"], o["metadata"]["name"]) for o in kustomize(K8S / "base")}
    patches = yaml.safe_load((OVERLAYS[overlay] / "kustomization.yaml").read_text()).get("patches", [])
    assert patches
    for patch in patches:
        assert (patch["target"]["kind"], patch["target"]["name"]) in base, patch["target"]


def test_a_patch_that_does_not_apply_fails_the_rendering(tmp_path):
    (tmp_path / "namespace.yaml").write_text((K8S / "base" / "namespace.yaml").read_text())
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [namespace.yaml]\npatches:\n  - target: {kind: Namespace}\n"
        "    patch: '[{op: replace, path: /spec/missing, value: x}]'\n")
    with pytest.raises(KustomizeError, match="/spec/missing"):
        kustomize(tmp_path)


def test_a_registry_set_with_kustomize_edit_reaches_every_igmu_container(tmp_path):
    """What docs/deploy.md tells users to do: `kustomize edit set image igmu=REGISTRY/igmu:TAG`."""
    overlay = tmp_path / "mine"
    overlay.mkdir()
    base = os.path.relpath(OVERLAYS["gpu"], overlay)  # kustomize loads relative paths only
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{base}]\nimages: [{{name: igmu, newName: registry.example.com/ml/igmu}}]\n")
    images = sorted(c["image"] for c in containers(kustomize(overlay)))
    moved = {i for i in images if i.startswith("registry.example.com/ml/igmu:")}
    assert moved and set(images) - moved == {"postgres:17"}


# --- schemas --------------------------------------------------------------------------------------

def test_ray_objects_match_the_kuberay_crds(rendered):
    name, objects = rendered
    ray_objects = [o for o in objects if o["apiVersion"] == "ray.io/v1"]
    assert {o["kind"] for o in ray_objects} == set(CRD_FILES)
    for obj in ray_objects:
        assert crd_errors(obj) == [], f"{name}: {obj['kind']}/{obj['metadata']['name']}"


def test_crd_validation_catches_a_misspelt_field_and_a_wrong_type():
    cluster = only(kustomize(OVERLAYS["gpu"]), "RayCluster")[0]
    misspelt = copy.deepcopy(cluster)
    misspelt["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert any("maxReplica" in e for e in crd_errors(misspelt))
    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # rayStartParams are strings
    assert any("num-cpus" in e for e in crd_errors(wrong_type))


def test_core_objects_match_the_kubernetes_schemas(rendered):
    name, objects = rendered
    core = [o for o in objects if o["apiVersion"] != "ray.io/v1"]
    for obj in core:
        assert core_errors(obj) == [], f"{name}: {obj['kind']}/{obj['metadata']['name']}"


def test_core_validation_catches_a_misspelt_field():
    deployment = copy.deepcopy(only(kustomize(OVERLAYS["dev"]), "Deployment", "igmu-mlflow")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert core_errors(deployment)


# --- entrypoints, images, versions ----------------------------------------------------------------

def resolve_command(argv: list[str]) -> click.Context:
    """Parse argv with igmu's own click tree: an unknown command or option raises."""
    from igmu.cli.main import cli

    assert argv[0] == "igmu", argv
    command, rest, path = cli, argv[1:], ["igmu"]
    while isinstance(command, click.Group):
        name, rest = rest[0], rest[1:]
        command = command.get_command(click.Context(cli), name)
        assert command is not None, f"no command {' '.join(path + [name])}"
        path.append(name)
    return command.make_context(" ".join(path), list(rest))


def test_rayjob_entrypoints_name_existing_commands_and_sweep_files(rendered):
    from igmu.sweep.file import load_sweep

    name, objects = rendered
    for job in only(objects, "RayJob"):
        ctx = resolve_command(shlex.split(job["spec"]["entrypoint"]))
        assert ctx.command.name == "sweep" and ctx.params["address"] == "auto"
        sweep_file = ctx.params["sweep_file"]
        assert not sweep_file.is_absolute() and sweep_file.parts[0] == "sweeps"
        load_sweep(REPO / sweep_file)  # exists and is valid; the image copies sweeps/ into its WORKDIR
        cluster = only(objects, "RayCluster", job["spec"]["clusterSelector"]["ray.io/cluster"])[0]
        for template in pod_templates(cluster):
            mounts = {m["mountPath"]: m["name"] for c in template["spec"]["containers"] for m in c["volumeMounts"]}
            assert ctx.params["storage"] in mounts, f"{name}: --storage is not on shared storage in every Ray pod"
            volume = next(v for v in template["spec"]["volumes"] if v["name"] == mounts[ctx.params["storage"]])
            claim = only(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])[0]
            assert claim["spec"]["accessModes"] == (["ReadWriteOnce"] if name == "dev" else ["ReadWriteMany"])


def test_dockerfile_workdir_holds_the_sweep_files():
    text = (REPO / "Dockerfile").read_text()
    workdir = re.findall(r"^WORKDIR\s+(\S+)", text, re.M)[-1]
    assert re.search(rf"^COPY\s.*\bsweeps\s+(\./sweeps|{re.escape(workdir)}/sweeps)\s*$", text, re.M)


def test_rayservice_serves_the_judge_application(rendered):
    _, objects = rendered
    service = only(objects, "RayService")[0]
    apps = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert [{k: a[k] for k in SERVE_APP} for a in apps] == [SERVE_APP]
    from igmu.serve.config import load_serve_config

    for app in apps:  # the builder must accept the manifest's args, and serve where the manifest routes
        assert load_serve_config(None, dict(app.get("args") or {})).route_prefix == app["route_prefix"]


def test_the_judge_application_builder_exists():
    module_name, attribute = SERVE_APP["import_path"].split(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attribute))
    from igmu.cli.main import cli

    serve = cli.get_command(click.Context(cli), "serve")
    assert serve is not None and {"judges", "status", "stop"} <= set(serve.list_commands(click.Context(serve)))


def test_ray_version_of_image_and_manifests_matches_pyproject(rendered):
    _, objects = rendered
    ray_version = pinned_ray_version()
    assert importlib.metadata.version("ray") == ray_version
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(ray_version)}$", dockerfile, re.M)
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-", dockerfile, re.M)
    versions = {c["rayVersion"] for o in objects if o["apiVersion"] == "ray.io/v1" for c in ray_cluster_specs(o)}
    assert versions == {ray_version}
    tag = f"{pyproject()['project']['version']}-ray{ray_version}"
    images = {c["image"] for c in containers(objects) if c["image"].split(":")[0].rsplit("/", 1)[-1] == IGMU_IMAGE}
    assert images == {f"{IGMU_IMAGE}:{tag}"}


def test_the_image_runs_as_a_non_root_user(rendered):
    _, objects = rendered
    users = re.findall(r"^USER\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    assert users and users[-1] not in ("root", "0")
    for obj in objects:
        for template in pod_templates(obj):
            assert template["spec"]["securityContext"]["runAsNonRoot"] is True


# --- cluster shape --------------------------------------------------------------------------------

def test_autoscaling_worker_groups_and_gpus(rendered):
    name, objects = rendered
    cluster = only(objects, "RayCluster", "igmu")[0]["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    for group in groups.values():
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
    gpu_limits = [c for c in containers(objects) if "nvidia.com/gpu" in c["resources"].get("limits", {})]
    if name == "dev":
        assert set(groups) == {"cpu"} and not gpu_limits
        return
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    job = only(objects, "RayJob")[0]
    from igmu.sweep.file import load_sweep

    sweep = load_sweep(REPO / resolve_command(shlex.split(job["spec"]["entrypoint"])).params["sweep_file"])
    assert sweep.resources.gpu > 0, "the gpu overlay's sweep should use the GPU group"


# --- MLflow, secrets, network ---------------------------------------------------------------------

def test_mlflow_allows_every_in_cluster_name_the_ray_pods_use(rendered):
    _, objects = rendered
    namespace = only(objects, "Namespace")[0]["metadata"]["name"]
    service = only(objects, "Service", "igmu-mlflow")[0]
    port = service["spec"]["ports"][0]["port"]
    args = only(objects, "Deployment", "igmu-mlflow")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    allowed = set(next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(","))
    name = service["metadata"]["name"]
    for host in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"):
        assert {host, f"{host}:{port}"} <= allowed
    uris = {e["value"] for c in containers(objects) for e in c.get("env", []) if e["name"] == "MLFLOW_TRACKING_URI"}
    uris |= {yaml.safe_load(j["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"]
             for j in only(objects, "RayJob")}
    assert uris and all(re.fullmatch(r"http://([^/]+)", u) and u[len("http://"):] in allowed for u in uris)
    assert any(a.startswith("--backend-store-uri=postgresql") for a in args)


def test_no_secret_value_is_in_the_manifests(rendered):
    _, objects = rendered
    assert not [s for s in only(objects, "Secret") if s.get("data") or s.get("stringData")]
    references = set()
    for container in containers(objects):
        for env in container.get("env", []):
            if re.search(r"PASSWORD|TOKEN|SECRET", env["name"]):
                assert "value" not in env, f"{env['name']} is a literal"
                ref = env["valueFrom"]["secretKeyRef"]
                references.add((ref["name"], ref["key"]))
    assert references == {POSTGRES_SECRET}
    deploy_doc = (REPO / "docs" / "deploy.md").read_text()
    assert f"kubectl create secret generic {POSTGRES_SECRET[0]}" in deploy_doc
    assert f"--from-literal={POSTGRES_SECRET[1]}=" in deploy_doc


def test_only_ray_pods_reach_mlflow_and_the_judges(rendered):
    _, objects = rendered
    policies = only(objects, "NetworkPolicy")
    pods = {(o["kind"], o["metadata"]["name"]): [t["metadata"]["labels"] for t in pod_templates(o)]
            for o in objects if pod_templates(o)}
    protected = {("Deployment", "igmu-mlflow"): "ray", ("RayService", "igmu-judges"): "ray",
                 ("StatefulSet", "igmu-postgres"): "mlflow"}
    mlflow_labels = pods[("Deployment", "igmu-mlflow")][0]
    for target, allowed in protected.items():
        for labels in pods[target]:
            covering = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
            assert covering, f"{target} pods {labels} have no NetworkPolicy"
            for policy in covering:
                assert policy["spec"]["policyTypes"] == ["Ingress"]
                for rule in policy["spec"]["ingress"]:
                    for peer in rule["from"]:
                        if "podSelector" in peer:
                            expected = RAY_NODE_SELECTOR if allowed == "ray" else mlflow_labels
                            assert peer["podSelector"]["matchLabels"] == expected
                        else:  # only the KubeRay operator, only on its control ports
                            assert peer["namespaceSelector"]["matchLabels"] == {
                                "kubernetes.io/metadata.name": "kuberay-system"}
                            assert {p["port"] for p in rule["ports"]} <= {8265, 52365}
    # the sweep cluster's pods are Ray pods (KubeRay labels them), so they pass the policies above;
    # the MLflow pod itself is not a Ray pod, so the policy is not vacuous
    assert not selects({"matchLabels": RAY_NODE_SELECTOR}, mlflow_labels)
