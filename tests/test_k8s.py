"""Offline checks of the Kubernetes deployment (k8s/, Dockerfile, Makefile, docs/deploy.md): no cluster,
registry or Docker needed.

Every overlay is rendered with `kubectl kustomize` (kubectl bundling kustomize v5 or newer, the
version the overlays are written for; older ones reject or misread them); `ray.io/v1` objects are
validated against the KubeRay v1.7.0 CRD schemas shipped in k8s/schemas/ (closed: an undeclared
field is an error), core kinds and every pod template inside the Ray objects against the upstream
Kubernetes schemas of `kubernetes-validate`, and the pieces that must agree across files are checked
against each other: Ray version, entrypoints and sweep files, service names and MLflow's allowed
hosts, Secret references, image pins, the requests against the node docs/deploy.md documents, the
NetworkPolicies against the conversations igmu needs, and the commands docs/deploy.md gives.

Where KubeRay adds to what the manifests say (its pod labels, the autoscaler sidecar, the submitter
pod and their default requests, the head Service), its v1.7.0 behaviour is written down below as
constants, with the source they come from.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import importlib.metadata
import ipaddress
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import NamedTuple

import click
import jsonschema
import kubernetes_validate
import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
OVERLAYS = {"dev": K8S / "overlays" / "dev", "gpu": K8S / "overlays" / "gpu"}
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
KUBERAY_VERSION = "1.7.0"
CRD_DIR = K8S / "schemas" / f"kuberay-v{KUBERAY_VERSION}"
KUBERNETES_VERSION = "1.32.0"
NAMESPACE = "igmu"
IGMU_IMAGE = "igmu"
POSTGRES_SECRET = ("igmu-postgres", "password")
KUSTOMIZE_MAJOR = 5
DEPLOY_DOC = REPO / "docs" / "deploy.md"
PIN_IMAGE = "pin-image.py"  # under k8s/
SERVE_APP_BUILDER = "igmu.serve.app:build_app"
PULL_POLICY = "IfNotPresent"
# name:tag@digest, where the digest is a real one or the kustomization's named placeholder
PINNED_IMAGE = re.compile(r"(?P<repository>[^@\s]+):(?P<tag>\w[\w.-]*)"
                          r"@(?P<digest>sha256:([0-9a-f]{64}|unpinned-[a-z-]+))")
FAKE_DIGESTS = ("sha256:" + "0123456789abcdef" * 4, "sha256:" + "fedcba9876543210" * 4)

MI, GI = 2**20, 2**30
RESOURCES = ("cpu", "memory")

# --- KubeRay v1.7.0: what it adds (ray-project/kuberay, ray-operator/controllers/ray/) -------------
# common/pod.go BuildAutoscalerContainer: the autoscaler sidecar of the head pod whenever
# enableInTreeAutoscaling is on; autoscalerOptions.resources replaces these requests.
KUBERAY_AUTOSCALER_REQUESTS = {"cpu": 0.5, "memory": 512 * MI}
# common/job.go GetDefaultSubmitterContainer: the submitter Job's pod (submissionMode K8sJobMode, the
# default) when the RayJob gives no submitterPodTemplate.
KUBERAY_SUBMITTER_REQUESTS = {"cpu": 0.5, "memory": 200 * MI}
# common/pod.go DefaultWorkerPodTemplate: the `wait-gcs-ready` init container of every worker pod. An
# init container's requests count only when they exceed the running containers' sum.
KUBERAY_WAIT_GCS_REQUESTS = {"cpu": 0.2, "memory": 256 * MI}
# Not pods, but addresses a NetworkPolicy must let the head's autoscaler reach: the API server as the
# head sees it after the `kubernetes` Service's DNAT (kind's control plane), and an internet address.
KUBERNETES_API = ("172.18.0.2", 6443)
INTERNET = ("203.0.113.7", 443)
# A port of a Ray worker process (Ray's default range starts at 10002): Ray pods reach one another on
# ports no Service names.
RAY_WORKER_PORT = 10002


def kuberay_labels(cluster: str, node_type: str, group: str) -> dict:
    """common/pod.go labelPod: the labels KubeRay puts on every Ray pod; the pod template cannot
    override ray.io/cluster, ray.io/node-type and ray.io/group."""
    return {"ray.io/is-ray-node": "yes", "ray.io/cluster": cluster, "ray.io/node-type": node_type,
            "ray.io/group": group, "ray.io/identifier": f"{cluster}-{node_type}",
            "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}


def head_service(cluster: dict) -> dict:
    """common/service.go BuildServiceForHeadPod: `<cluster>-head-svc`, selecting the head pod, with the
    head container's ports."""
    name = cluster["metadata"]["name"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    return {"kind": "Service", "metadata": {"name": f"{name}-head-svc"},
            "spec": {"selector": {"ray.io/cluster": name, "ray.io/node-type": "head"},
                     "ports": [{"name": p["name"], "port": p["containerPort"], "targetPort": p["containerPort"]}
                               for p in head.get("ports", [])]}}


# Left free on the documented dev node for what is not igmu's. On a one-node kind or minikube
# cluster the control plane runs there too (kubeadm's requests: apiserver 250m, controller-manager
# 200m, scheduler 100m, etcd 100m/100Mi), beside CoreDNS (2 x 100m/70Mi), the CNI, kube-proxy and the
# KubeRay operator (its Helm chart: 100m/512Mi): about 1.1 CPU and 1 GiB. The rest is margin for
# the kubelet's eviction threshold and for add-ons such as a metrics server or a local registry.
SYSTEM_HEADROOM = {"cpu": 1.5, "memory": 2 * GI}


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


@functools.cache
def _rendered(overlay: str) -> tuple[dict, ...]:
    return tuple(kustomize(OVERLAYS[overlay]))


def render(overlay: str) -> list[dict]:
    """A private copy of the overlay's objects (rendered once per session)."""
    return copy.deepcopy(list(_rendered(overlay)))


@pytest.fixture(params=sorted(OVERLAYS))
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def only(objects, kind, name=None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def ray_cluster_specs(obj: dict) -> list[dict]:
    if obj["apiVersion"] != "ray.io/v1":
        return []
    spec = obj["spec"]
    return [s for s in (spec if obj["kind"] == "RayCluster" else spec.get("rayClusterConfig") or
                        spec.get("rayClusterSpec"),) if s]


def pod_templates(obj: dict) -> list[dict]:
    """Every pod template an object creates pods from, the RayJob's submitter included."""
    if obj["kind"] in ("Deployment", "StatefulSet"):
        return [obj["spec"]["template"]]
    templates = []
    for cluster in ray_cluster_specs(obj):
        templates.append(cluster["headGroupSpec"]["template"])
        templates += [group["template"] for group in cluster.get("workerGroupSpecs", [])]
    if obj["kind"] == "RayJob" and obj["spec"].get("submitterPodTemplate"):
        templates.append(obj["spec"]["submitterPodTemplate"])
    return templates


def template_containers(template: dict) -> list[dict]:
    return template["spec"].get("initContainers", []) + template["spec"]["containers"]


def containers(objects) -> list[dict]:
    """Every container and init container of every pod template."""
    return [c for o in objects for t in pod_templates(o) for c in template_containers(t)]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned_ray_version() -> str:
    deps = [d for d in pyproject()["project"]["dependencies"] if re.match(r"ray\b", d)]
    assert len(deps) == 1, deps
    match = re.fullmatch(r"ray(\[[^\]]*\])?==([0-9][0-9.]*)", deps[0].replace(" ", ""))
    assert match, f"Ray must be pinned exactly (ray[...]==X.Y.Z) so the image can match it: {deps[0]}"
    return match.group(2)


def image_tag() -> str:
    return f"{pyproject()['project']['version']}-ray{pinned_ray_version()}"


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


def selects(selector: dict | None, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions; {} selects everything)."""
    selector = selector or {}
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator in ("In", "NotIn"):
            ok = (key in labels and labels[key] in values) == (operator == "In")
        else:
            ok = (key in labels) == (operator == "Exists")
        if not ok:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- rendering ------------------------------------------------------------------------------------

def test_overlays_render_to_uniquely_named_namespaced_objects(rendered):
    name, objects = rendered
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), f"{name}: duplicate objects"
    assert {"RayCluster", "RayJob", "Deployment", "StatefulSet", "Service",
            "PersistentVolumeClaim", "NetworkPolicy", "Namespace"} <= {k for k, _ in keys}
    namespace = only(objects, "Namespace")[0]["metadata"]["name"]
    assert namespace == NAMESPACE
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


# --- schemas --------------------------------------------------------------------------------------

def test_ray_objects_match_the_kuberay_crds(rendered):
    name, objects = rendered
    ray_objects = [o for o in objects if o["apiVersion"] == "ray.io/v1"]
    assert {o["kind"] for o in ray_objects} == set(CRD_FILES)
    for obj in ray_objects:
        assert crd_errors(obj) == [], f"{name}: {obj['kind']}/{obj['metadata']['name']}"


def test_crd_validation_catches_a_misspelt_field_and_a_wrong_type():
    cluster = only(render("gpu"), "RayCluster")[0]
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


def test_pod_templates_inside_the_ray_objects_match_the_kubernetes_schemas(rendered):
    """The KubeRay CRDs describe pod templates loosely in places; KubeRay copies them into real
    pods (the submitter's into a batch Job), which the API server validates strictly."""
    name, objects = rendered
    for obj in (o for o in objects if o["apiVersion"] == "ray.io/v1"):
        for template in pod_templates(obj):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                       "metadata": {"name": "t", "namespace": NAMESPACE}, "template": template}
            assert core_errors(wrapped) == [], f"{name}: {obj['kind']}/{obj['metadata']['name']}"


def test_core_validation_catches_a_misspelt_field():
    deployment = copy.deepcopy(only(render("dev"), "Deployment", "igmu-mlflow")[0])
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


def test_the_judge_application_builder_exists():
    module_name, attribute = SERVE_APP_BUILDER.split(":")
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
    images = {c["image"] for c in containers(objects) if c["image"].split(":")[0].rsplit("/", 1)[-1] == IGMU_IMAGE}
    assert len(images) == 1, images
    assert PINNED_IMAGE.fullmatch(images.pop()).group("tag") == image_tag()


def test_the_image_runs_as_a_non_root_user(rendered):
    _, objects = rendered
    users = re.findall(r"^USER\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    assert users and users[-1] not in ("root", "0")
    for obj in objects:
        for template in pod_templates(obj):
            assert template["spec"]["securityContext"]["runAsNonRoot"] is True


# --- images: tag + digest, pulled only when missing ------------------------------------------------

def kustomization_images() -> dict[str, dict]:
    images = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["images"]
    return {i["name"]: i for i in images}


def test_every_container_names_its_image_by_tag_and_digest_and_pulls_it_only_when_missing(rendered):
    """A tag can be moved to another image; a digest cannot. Containers KubeRay adds inherit both from
    the head container (the submitter, `wait-gcs-ready`) or from autoscalerOptions (the sidecar)."""
    name, objects = rendered
    for container in containers(objects):
        assert PINNED_IMAGE.fullmatch(container["image"]), f"{name}: {container['name']}: {container['image']}"
        assert container.get("imagePullPolicy") == PULL_POLICY, f"{name}: {container['name']}"
    for cluster in (s for o in objects for s in ray_cluster_specs(o) if s.get("enableInTreeAutoscaling")):
        options = cluster.get("autoscalerOptions") or {}
        assert "image" not in options and options.get("imagePullPolicy") == PULL_POLICY
    # the manifests leave the tag and digest to the kustomization, so one block pins them all
    raw = "".join(p.read_text() for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml")
    assert not re.search(r"^\s*-?\s*image: \S*[:@]", raw, re.M)


def test_unpinned_placeholders_are_named_as_such_and_documented():
    """Until `make image` / `make pin-postgres` run, the digests are placeholders no registry can
    serve (a pod fails with InvalidImageName rather than run an unreviewed image); docs/deploy.md
    must say so, and must not present them as real."""
    doc = DEPLOY_DOC.read_text()
    for name, entry in kustomization_images().items():
        assert entry["newTag"] and entry["digest"].startswith("sha256:"), name
        if entry["digest"].startswith("sha256:unpinned-"):
            target = entry["digest"].removeprefix("sha256:unpinned-run-make-")
            assert f"make {target}" in doc, f"docs/deploy.md does not say how to pin {name}"
    assert "InvalidImageName" in doc


def copy_k8s(tmp_path: Path) -> Path:
    return Path(shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("schemas")))


def pin_image(k8s: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(k8s / PIN_IMAGE), *args], capture_output=True, text=True, check=False)


def test_pin_image_writes_the_pushed_digest_that_every_container_then_renders_with(tmp_path):
    k8s = copy_k8s(tmp_path)
    kustomization = k8s / "base" / "kustomization.yaml"
    before = kustomization.read_text()
    igmu = f"registry.example.com:5000/ml/igmu:{image_tag()}@{FAKE_DIGESTS[0]}"
    postgres_ref = pin_image(k8s, "--show", str(kustomization), "postgres").stdout.strip()
    postgres = f"{postgres_ref}@{FAKE_DIGESTS[1]}"
    for name, reference in (("igmu", igmu), ("postgres", postgres)):
        result = pin_image(k8s, str(kustomization), name, reference)
        assert result.returncode == 0, result.stderr
    changed = [line for line in difflib.ndiff(before.splitlines(), kustomization.read_text().splitlines())
               if line.startswith(("- ", "+ "))]
    assert changed and all(re.match(r"[-+]\s+(newName|newTag|digest):", c) for c in changed), changed
    pinned = {i["name"]: i for i in yaml.safe_load(kustomization.read_text())["images"]}
    for name, reference in (("igmu", igmu), ("postgres", postgres)):
        entry = pinned[name]
        assert f"{entry['newName']}:{entry['newTag']}@{entry['digest']}" == reference
    for overlay in OVERLAYS:
        objects = kustomize(k8s / "overlays" / overlay)
        images = {c["image"] for c in containers(objects)}
        assert images == {igmu, postgres}, overlay
        statefulset = only(objects, "StatefulSet", "igmu-postgres")[0]
        assert statefulset["spec"]["template"]["spec"]["containers"][0]["image"] == postgres


def test_pin_image_refuses_what_is_not_a_digest_or_not_in_the_block(tmp_path):
    k8s = copy_k8s(tmp_path)
    kustomization = k8s / "base" / "kustomization.yaml"
    before = kustomization.read_text()
    for name, reference in (("igmu", f"igmu:{image_tag()}"),  # a tag alone pins nothing
                            ("igmu", f"igmu:{image_tag()}@sha256:abc"),
                            ("igmu", f"igmu@{FAKE_DIGESTS[0]}"),  # the tag stays, for whoever reads the manifests
                            ("redis", f"redis:7@{FAKE_DIGESTS[0]}")):
        result = pin_image(k8s, str(kustomization), name, reference)
        assert result.returncode != 0 and result.stderr, (name, reference)
        assert kustomization.read_text() == before


def test_make_image_pushes_and_pins_the_kustomization_the_overlays_build_on():
    make = shutil.which("make")
    assert make, "make not found"

    def dry_run(*args: str) -> str:
        result = subprocess.run([make, "-n", *args, f"PYTHON={sys.executable}"], cwd=REPO,
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    registry = "registry.example.com/ml"
    reference = f"{registry}/{IGMU_IMAGE}:{image_tag()}"
    steps = dry_run("image", f"REGISTRY={registry}").splitlines()
    build, push, pin = (next(i for i, s in enumerate(steps) if re.match(pattern, s)) for pattern in
                        (rf"docker build .*-t {re.escape(reference)} \.$", rf"docker push {re.escape(reference)}$",
                         rf".* k8s/{PIN_IMAGE} k8s/base/kustomization.yaml igmu \"{re.escape(reference)}@"))
    assert build < push < pin
    assert "docker push" not in dry_run("image")  # no registry, nothing pushed (nor pinned)
    postgres = dry_run("pin-postgres")
    assert f"k8s/{PIN_IMAGE} --show k8s/base/kustomization.yaml postgres" in postgres
    assert re.search(rf"k8s/{PIN_IMAGE} k8s/base/kustomization.yaml postgres ", postgres)
    for overlay in OVERLAYS.values():  # every overlay builds on the kustomization `make` pins
        assert "../../base" in yaml.safe_load((overlay / "kustomization.yaml").read_text())["resources"]


# --- the Dockerfile: dependencies before code -------------------------------------------------------

def dockerfile_steps() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            steps.append((instruction.upper(), rest.strip()))
    return steps


def dockerfile_arg(steps, name: str) -> str:
    value = next(r.split("=", 1)[1] for i, r in steps if i == "ARG" and r.startswith(f"{name}="))
    return shlex.split(value)[0]


def requirements_step(steps) -> tuple[int, str]:
    return next((n, r) for n, (i, r) in enumerate(steps) if i == "RUN" and "pip install -r" in r)


def test_dockerfile_installs_the_dependencies_before_it_copies_the_code():
    """So that an edit of igmu/ rebuilds only the last layers instead of reinstalling everything."""
    steps = dockerfile_steps()
    copies = [(n, r.split()) for n, (i, r) in enumerate(steps) if i in ("COPY", "ADD")]
    install_deps, _ = requirements_step(steps)
    copy_pyproject = next(n for n, words in copies if "pyproject.toml" in words)
    copy_code = next(n for n, words in copies if "igmu" in words)
    install_code = next(n for n, (i, r) in enumerate(steps)
                        if i == "RUN" and re.search(r"pip install --no-deps \.$", r))
    assert copy_pyproject < install_deps < copy_code < install_code
    before = [words for n, words in copies if n < install_deps]
    assert before and all(set(words) & {"igmu", ".", "README.md", "sweeps"} == set() for words in before), before
    # after the code arrives, nothing resolves dependencies again
    assert all("--no-deps" in r for n, (i, r) in enumerate(steps) if n > copy_code and "pip install" in r)


def test_dockerfile_requirements_are_pyprojects_with_the_judges_and_cluster_extras():
    steps = dockerfile_steps()
    extras = dockerfile_arg(steps, "EXTRAS").split()
    optional = pyproject()["project"]["optional-dependencies"]
    assert {"judges", "cluster"} <= set(extras) <= set(optional)
    _, run = requirements_step(steps)
    generate = shlex.split(run.split(" > ", 1)[0].replace("${EXTRAS}", " ".join(extras)))
    assert generate[0] == "python"
    result = subprocess.run([sys.executable, *generate[1:]], cwd=REPO, capture_output=True, text=True, check=True)
    expected = pyproject()["project"]["dependencies"] + [r for e in extras for r in optional[e]]
    assert result.stdout.splitlines() == expected
    assert any(r.startswith("nudenet") for r in result.stdout.splitlines())


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


def test_the_judges_are_served_on_the_sweep_cluster_not_on_a_separate_one(rendered):
    """`eval.judges: serve` starts or reuses the judges' Serve application on the sweep's own Ray
    cluster and calls it through a DeploymentHandle (igmu.sweep.engine.judges_service,
    igmu.serve.services), so a RayService, which is a second Ray cluster, would serve no sweep."""
    _, objects = rendered
    assert {o["kind"] for o in objects if o["apiVersion"] == "ray.io/v1"} == {"RayCluster", "RayJob"}
    doc = DEPLOY_DOC.read_text()
    assert "eval.judges: serve" in doc
    assert "rayservice" not in " ".join(doc_lines(doc)).lower()
    assert "judges as a RayService" not in (REPO / "README.md").read_text()


# --- sizing ---------------------------------------------------------------------------------------

UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": MI, "Gi": GI, "Ti": 2**40}
NOT_PODS = {"Namespace", "Service", "PersistentVolumeClaim", "NetworkPolicy", "ConfigMap", "Secret", "ServiceAccount"}


def quantity(value) -> float:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", str(value))
    assert match and match.group(2) in UNITS, value
    return float(match.group(1)) * UNITS[match.group(2)]


def container_requests(resources: dict | None) -> dict:
    """A container's requests; a resource with only a limit is requested at its limit, as the API
    server defaults it."""
    requests, limits = (resources or {}).get("requests") or {}, (resources or {}).get("limits") or {}
    return {r: quantity(requests.get(r, limits.get(r, 0))) for r in RESOURCES}


def total(*parts: dict) -> dict:
    return {r: sum(p[r] for p in parts) for r in RESOURCES}


def scale(part: dict, times: float) -> dict:
    return {r: part[r] * times for r in RESOURCES}


def pod_requests(spec: dict, sidecars=(), inits=()) -> dict:
    """What the scheduler reserves for a pod: its containers' sum, or its largest init container if
    that is more (init containers run one at a time, before the others)."""
    assert not any(c.get("restartPolicy") for c in spec.get("initContainers", [])), "sidecar init containers"
    running = total(*(container_requests(c.get("resources")) for c in spec["containers"]), *sidecars)
    starting = [container_requests(c.get("resources")) for c in spec.get("initContainers", [])] + list(inits)
    return {r: max([running[r]] + [s[r] for s in starting]) for r in RESOURCES}


def ray_cluster_requests(spec: dict) -> dict:
    sidecars = []
    if spec.get("enableInTreeAutoscaling"):
        resources = (spec.get("autoscalerOptions") or {}).get("resources")
        sidecars.append(container_requests(resources) if resources else KUBERAY_AUTOSCALER_REQUESTS)
    parts = [pod_requests(spec["headGroupSpec"]["template"]["spec"], sidecars)]
    for group in spec.get("workerGroupSpecs", []):
        # at maxReplicas: the autoscaler starts that many when trials wait, and a pod the node cannot
        # hold stays Pending while its trials wait with it
        pods = group["maxReplicas"] * group.get("numOfHosts", 1)
        parts.append(scale(pod_requests(group["template"]["spec"], inits=[KUBERAY_WAIT_GCS_REQUESTS]), pods))
    return total(*parts)


def requested(objects) -> dict:
    """The requests of every pod the objects can run at once, KubeRay's additions included."""
    parts = []
    for obj in objects:
        kind, spec = obj["kind"], obj.get("spec") or {}
        if kind in ("Deployment", "StatefulSet"):
            parts.append(scale(pod_requests(spec["template"]["spec"]), spec.get("replicas", 1)))
        elif kind in ("RayCluster", "RayJob", "RayService"):
            parts += [ray_cluster_requests(s) for s in ray_cluster_specs(obj)]
            mode = spec.get("submissionMode", "K8sJobMode")
            if kind == "RayJob" and mode in ("K8sJobMode", "SidecarMode"):
                template = spec.get("submitterPodTemplate") if mode == "K8sJobMode" else None
                parts.append(pod_requests(template["spec"]) if template else KUBERAY_SUBMITTER_REQUESTS)
        else:
            assert kind in NOT_PODS, f"{kind} runs pods this sum does not count yet"
    return total(*parts)


def documented_dev_node() -> dict:
    match = re.search(r"kubectl apply -k k8s/overlays/dev\b[^\n]*\((\d+) CPUs, (\d+) GiB\)", DEPLOY_DOC.read_text())
    assert match, "docs/deploy.md no longer states the dev overlay's node next to its apply command"
    return {"cpu": float(match.group(1)), "memory": float(match.group(2)) * GI}


def shown(resources: dict) -> str:
    return f"{resources['cpu']:g} CPU, {resources['memory'] / GI:.2f} GiB"


def test_the_dev_overlay_fits_the_node_docs_deploy_md_documents():
    node = documented_dev_node()
    comment = re.search(r"(\d+) CPUs, (\d+) GiB", (OVERLAYS["dev"] / "kustomization.yaml").read_text())
    assert comment and {"cpu": float(comment.group(1)), "memory": float(comment.group(2)) * GI} == node
    need = requested(render("dev"))
    room = {r: node[r] - SYSTEM_HEADROOM[r] for r in RESOURCES}
    assert all(need[r] <= room[r] for r in RESOURCES), (
        f"the dev overlay requests {shown(need)}; the {shown(node)} node leaves {shown(room)} after "
        f"{shown(SYSTEM_HEADROOM)} for system pods")


def test_the_sum_counts_kuberays_additions_and_init_containers():
    objects = render("dev")
    with_template = requested(objects)
    job = only(objects, "RayJob")[0]
    template = job["spec"].pop("submitterPodTemplate")
    without = requested(objects)
    assert without == pytest.approx(total(with_template, scale(pod_requests(template["spec"]), -1),
                                          KUBERAY_SUBMITTER_REQUESTS))
    cluster = only(objects, "RayCluster")[0]["spec"]
    cluster["autoscalerOptions"]["resources"] = {"requests": {"cpu": "0", "memory": "0"}}
    assert requested(objects) == pytest.approx(total(without, scale(KUBERAY_AUTOSCALER_REQUESTS, -1)))
    worker = pod_requests(cluster["workerGroupSpecs"][0]["template"]["spec"])
    before = requested(objects)
    cluster["workerGroupSpecs"][0]["maxReplicas"] += 1
    assert requested(objects) == pytest.approx(total(before, worker))
    pod = {"containers": [{"resources": {"requests": {"cpu": "100m"}}}],
           "initContainers": [{"resources": {"limits": {"cpu": "2", "memory": "1Gi"}}}]}
    assert pod_requests(pod) == {"cpu": 2.0, "memory": GI}


# --- the sweep waits for MLflow ---------------------------------------------------------------------

def wait_for_mlflow(job: dict) -> dict:
    inits = job["spec"]["submitterPodTemplate"]["spec"].get("initContainers", [])
    waits = [c for c in inits if any(e["name"] == "MLFLOW_TRACKING_URI" for e in c.get("env", []))]
    assert len(waits) == 1, "the submitter has no init container that waits for MLflow"
    return waits[0]


def test_the_sweep_is_submitted_only_once_mlflow_is_healthy(rendered):
    """Postgres, MLflow and the Ray cluster start together on `kubectl apply`; the submitter pod's
    init container holds `ray job submit` until MLflow's /health answers."""
    name, objects = rendered
    service = only(objects, "Service", "igmu-mlflow")[0]
    url = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    mlflow = only(objects, "Deployment", "igmu-mlflow")[0]["spec"]["template"]["spec"]["containers"][0]
    health = mlflow["readinessProbe"]["httpGet"]["path"]
    jobs = only(objects, "RayJob")
    assert jobs
    for job in jobs:
        spec = job["spec"]
        # init containers exist only on the submitter Job's pod: SidecarMode has no such pod, and
        # HTTPMode submits from the operator
        assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
        template = spec["submitterPodTemplate"]["spec"]
        assert template["restartPolicy"] in ("Never", "OnFailure"), "a Job's pods may not restart Always"
        submitter = template["containers"][0]
        assert "command" not in submitter, "KubeRay writes `ray job submit` only into an empty command"
        wait = wait_for_mlflow(job)
        env = {e["name"]: e["value"] for e in wait["env"]}
        runtime = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"]
        assert env["MLFLOW_TRACKING_URI"] == runtime == url, name
        assert f'"{health}"' in "\n".join(wait["command"] + wait["args"])
        assert float(env["MLFLOW_WAIT_SECONDS"]) > 0


def start_wait(url: str, seconds: float) -> subprocess.Popen:
    """The dev overlay's wait-for-mlflow init container, run here with this interpreter."""
    wait = wait_for_mlflow(only(render("dev"), "RayJob")[0])
    argv = wait["command"] + wait.get("args", [])
    assert argv[0] == "python"
    env = {**os.environ, **{e["name"]: e["value"] for e in wait["env"]},
           "MLFLOW_TRACKING_URI": url, "MLFLOW_WAIT_SECONDS": str(seconds)}
    return subprocess.Popen([sys.executable, *argv[1:]], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_the_wait_for_mlflow_gives_up_when_nothing_answers():
    waiting = start_wait(f"http://127.0.0.1:{free_port()}", 0)
    out, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 1 and "not healthy after 0 s" in out, out


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server we started, then SIGKILL what is left of its own process group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_the_wait_for_mlflow_returns_once_a_real_mlflow_server_is_healthy(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    waiting = start_wait(url, 240)
    try:
        assert waiting.stdout.readline().startswith(f"waiting for {url}/health"), "it did not wait"
        assert waiting.poll() is None
        with (tmp_path / "mlflow.log").open("w") as log:
            server = subprocess.Popen(
                [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                 "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                 "--artifacts-destination", str(tmp_path / "artifacts"),
                 "--allowed-hosts", f"127.0.0.1,127.0.0.1:{port}", "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = waiting.communicate(timeout=240)
            assert waiting.returncode == 0, out + (tmp_path / "mlflow.log").read_text()[-3000:]
            assert f"{url}/health is healthy" in out
            with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
                assert response.status == 200
        finally:
            stop(server)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()


# --- finished RayJobs -------------------------------------------------------------------------------

DELETION_FIELDS = {"shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "deletionStrategy"}


def test_finished_rayjobs_release_what_kuberay_can_release(rendered):
    """KubeRay v1.7.0 deletes nothing after a RayJob with a clusterSelector finishes
    (rayjob_controller.go, the Complete/Failed case returns first), so on the shared cluster the
    deletion fields would be accepted and ignored: the cluster's autoscaler gives the workers back, and
    docs/deploy.md says how to delete a finished RayJob. A RayJob with a cluster of its own must have
    KubeRay delete that cluster after it finishes."""
    name, objects = rendered
    for job in only(objects, "RayJob"):
        spec = job["spec"]
        if spec.get("clusterSelector"):
            assert not DELETION_FIELDS & set(spec), f"{name}: {sorted(DELETION_FIELDS & set(spec))} do nothing here"
            cluster = only(objects, "RayCluster", spec["clusterSelector"]["ray.io/cluster"])[0]["spec"]
            assert cluster["enableInTreeAutoscaling"] and cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
        else:
            assert spec.get("shutdownAfterJobFinishes") is True and spec.get("ttlSecondsAfterFinished", 0) > 0
    assert re.search(rf"kubectl -n {NAMESPACE} delete rayjob \S+", DEPLOY_DOC.read_text())


# --- MLflow, secrets ----------------------------------------------------------------------------

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
    deploy_doc = DEPLOY_DOC.read_text()
    assert f"kubectl create secret generic {POSTGRES_SECRET[0]}" in deploy_doc
    assert f"--from-literal={POSTGRES_SECRET[1]}=" in deploy_doc


def secrets_on_command_lines(objects) -> list[str]:
    """Containers whose command or args expand a variable that holds a Secret: Kubernetes expands
    $(VAR) there, and a shell $VAR or ${VAR}."""
    found = []
    for obj in objects:
        for template in pod_templates(obj):
            for container in template_containers(template):
                assert not any("secretRef" in source for source in container.get("envFrom", [])), \
                    "envFrom a Secret: its variable names are not known here"
                secret = {e["name"] for e in container.get("env", []) if "secretKeyRef" in (e.get("valueFrom") or {})}
                argv = "\n".join(container.get("command", []) + container.get("args", []))
                found += [f"{container['name']}: {var}" for var in secret
                          if re.search(rf"\$(\({var}\)|\{{{var}\}}|{var}\b)", argv)]
    return found


def test_no_secret_reaches_a_command_line(rendered):
    """Any process on the node can read a process's argv (/proc/PID/cmdline, `ps`); only its own
    user can read its environment."""
    name, objects = rendered
    assert secrets_on_command_lines(objects) == [], name
    mlflow = only(objects, "Deployment", "igmu-mlflow")[0]["spec"]["template"]["spec"]["containers"][0]
    uri = next(a.split("=", 1)[1] for a in mlflow["args"] if a.startswith("--backend-store-uri="))
    assert urllib.parse.urlsplit(uri).password is None
    # libpq, under psycopg2 and SQLAlchemy, reads PGPASSWORD when the URI carries no password
    reference = next(e for e in mlflow["env"] if e["name"] == "PGPASSWORD")["valueFrom"]["secretKeyRef"]
    assert (reference["name"], reference["key"]) == POSTGRES_SECRET
    leaky = copy.deepcopy(objects)
    leaky_mlflow = only(leaky, "Deployment", "igmu-mlflow")[0]["spec"]["template"]["spec"]["containers"][0]
    leaky_mlflow["args"].append("--backend-store-uri=postgresql://mlflow:$(PGPASSWORD)@igmu-postgres/mlflow")
    assert secrets_on_command_lines(leaky) == ["mlflow: PGPASSWORD"]


# --- network ----------------------------------------------------------------------------------------

class Endpoint(NamedTuple):
    namespace: str | None  # None: an address outside the pod network
    labels: dict
    ports: dict  # container port name -> number
    ip: str | None = None


def pod(template: dict, added: dict | None = None, fixed=()) -> Endpoint:
    """A pod from a template, with the labels its controller adds (`fixed` ones win over the template's)."""
    own = template.get("metadata", {}).get("labels") or {}
    labels = {**(added or {}), **{k: v for k, v in own.items() if k not in fixed}}
    ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])
             if "name" in p}
    return Endpoint(NAMESPACE, labels, ports)


def endpoints(objects) -> dict[str, Endpoint]:
    """Every pod the objects run, by role ("ray-worker:<group>", "submitter:<RayJob>"), and the
    peers around them: the KubeRay operator, cluster DNS, a pod of igmu's namespace and one of
    another that are not igmu's, the Kubernetes API and the internet."""
    found = {}
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet"):
            template = obj["spec"]["template"]
            found[template["metadata"]["labels"]["app.kubernetes.io/component"]] = pod(template)
        elif kind == "RayCluster":
            fixed = ("ray.io/cluster", "ray.io/node-type", "ray.io/group")
            found["ray-head"] = pod(obj["spec"]["headGroupSpec"]["template"],
                                    kuberay_labels(name, "head", "headgroup"), fixed)
            for group in obj["spec"].get("workerGroupSpecs", []):
                found[f"ray-worker:{group['groupName']}"] = pod(
                    group["template"], kuberay_labels(name, "worker", group["groupName"]), fixed)
        elif kind == "RayJob":
            template = obj["spec"].get("submitterPodTemplate") or {"spec": {"containers": []}}
            # the Job controller labels the pods of the Job KubeRay names after the RayJob
            found[f"submitter:{name}"] = pod(template, {"batch.kubernetes.io/job-name": name, "job-name": name})
    found["kuberay-operator"] = Endpoint("kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"}, {})
    found["kube-dns"] = Endpoint("kube-system", {"k8s-app": "kube-dns"}, {"dns": 53})
    found["stranger"] = Endpoint(NAMESPACE, {"run": "debug"}, {})
    found["foreign pod"] = Endpoint("default", {"app": "other"}, {})
    found["kubernetes-api"] = Endpoint(None, {}, {}, KUBERNETES_API[0])
    found["internet"] = Endpoint(None, {}, {}, INTERNET[0])
    return found


def roles(found: dict, prefix: str) -> list[str]:
    return [r for r in found if r == prefix or r.startswith(f"{prefix}:")]


def policy_types(policy: dict) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or ["Ingress"] + (["Egress"] if "egress" in spec else [])


def ports_match(ports, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        assert isinstance(entry["port"], int), "named ports in a policy are not modelled here: use numbers"
        if entry["port"] <= port <= entry.get("endPort", entry["port"]):
            return True
    return False


def peer_matches(peer: dict, other: Endpoint, namespace: str) -> bool:
    if "ipBlock" in peer:
        if other.ip is None:
            return False  # pod addresses are not modelled: igmu's policies pick pods by label
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return (address in ipaddress.ip_network(block["cidr"])
                and not any(address in ipaddress.ip_network(e) for e in block.get("except", [])))
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        in_scope = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace})
    else:
        in_scope = other.namespace == namespace
    return in_scope and ("podSelector" not in peer or selects(peer["podSelector"], other.labels))


def side_allows(policies, direction: str, subject: Endpoint, other: Endpoint, port: int, protocol: str) -> bool:
    """Whether the policies selecting `subject` let this connection out (Egress) or in (Ingress). A
    pod no policy of that direction selects is unrestricted; igmu's policies govern only its pods."""
    if subject.namespace != NAMESPACE:
        return True
    governing = [p for p in policies
                 if direction in policy_types(p) and selects(p["spec"]["podSelector"], subject.labels)]
    if not governing:
        return True
    rules, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    return any(ports_match(rule.get("ports"), port, protocol)
               and (not rule.get(peers)
                    or any(peer_matches(p, other, policy["metadata"]["namespace"]) for p in rule[peers]))
               for policy in governing for rule in policy["spec"].get(rules) or [])


def allowed(policies, client: Endpoint, server: Endpoint, port: int, protocol: str = "TCP") -> bool:
    return (side_allows(policies, "Egress", client, server, port, protocol)
            and side_allows(policies, "Ingress", server, client, port, protocol))


# Who must reach each Service port, by role ("ray-worker" and "submitter" stand for every worker
# group and every RayJob's submitter). Every port of every Service the overlays create, and of the
# head Service KubeRay creates, must be listed, so that a new one cannot go unexamined.
SERVICE_CLIENTS = {
    ("igmu-mlflow", "http"): ("ray-head", "ray-worker", "submitter"),
    ("igmu-postgres", "postgres"): ("mlflow",),
    ("igmu-head-svc", "gcs"): ("ray-worker",),
    ("igmu-head-svc", "dashboard"): ("ray-worker", "submitter", "kuberay-operator"),
    ("igmu-head-svc", "client"): ("ray-worker",),  # Ray Client: no igmu pod uses it; the cluster's own may
}


def services(objects) -> list[dict]:
    return only(objects, "Service") + [head_service(c) for c in only(objects, "RayCluster")]


def target_port(port: dict, server: Endpoint) -> int:
    target = port.get("targetPort", port["port"])
    return server.ports[target] if isinstance(target, str) and not target.isdigit() else int(target)


def default_denies(policies) -> list[dict]:
    return [p for p in policies if not p["spec"]["podSelector"] and set(policy_types(p)) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]


def test_a_default_deny_covers_every_pod_in_both_directions(rendered):
    name, objects = rendered
    assert default_denies(only(objects, "NetworkPolicy")), f"{name}: no default-deny NetworkPolicy"


def test_the_policy_model_reads_the_policies():
    found = endpoints(render("dev"))
    deny = default_denies(only(render("dev"), "NetworkPolicy"))
    assert allowed([], found["stranger"], found["ray-head"], 8265)
    assert not allowed(deny, found["ray-head"], found["kube-dns"], 53, "UDP")
    assert not allowed(deny, found["ray-worker:cpu"], found["ray-head"], 6379)


def test_every_service_port_is_open_to_the_pods_that_use_it(rendered):
    name, objects = rendered
    policies, found = only(objects, "NetworkPolicy"), endpoints(objects)
    listed = set()
    for service in services(objects):
        selector = {"matchLabels": service["spec"]["selector"]}
        targets = [r for r, e in found.items() if e.namespace == NAMESPACE and selects(selector, e.labels)]
        assert targets, f"{name}: Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            key = (service["metadata"]["name"], port["name"])
            listed.add(key)
            assert key in SERVICE_CLIENTS, f"{key}: who needs it? add it to SERVICE_CLIENTS"
            for prefix in SERVICE_CLIENTS[key]:
                assert roles(found, prefix), prefix
                for client in roles(found, prefix):
                    for target in targets:
                        number = target_port(port, found[target])
                        assert allowed(policies, found[client], found[target], number, port.get("protocol", "TCP")), \
                            f"{name}: {client} cannot reach {key[0]}:{port['port']} ({target}:{number})"
    assert listed == set(SERVICE_CLIENTS)


def test_ray_pods_dns_and_the_kubernetes_api_are_reachable(rendered):
    name, objects = rendered
    policies, found = only(objects, "NetworkPolicy"), endpoints(objects)
    ray = roles(found, "ray-head") + roles(found, "ray-worker")
    flows = [(a, b, RAY_WORKER_PORT, "TCP") for a in ray for b in ray]  # a worker group's pods reach each other too
    flows += [(w, "ray-head", 52365, "TCP") for w in roles(found, "ray-worker")]  # the dashboard agent
    flows += [(r, "kube-dns", 53, protocol) for r, e in found.items() if e.namespace == NAMESPACE and r != "stranger"
              for protocol in ("UDP", "TCP")]
    flows.append(("ray-head", "kubernetes-api", KUBERNETES_API[1], "TCP"))  # the autoscaler sidecar
    for client, server, port, protocol in flows:
        assert allowed(policies, found[client], found[server], port, protocol), f"{name}: {client} -> {server}:{port}"


def test_the_ray_head_is_closed_to_every_pod_outside_its_cluster(rendered):
    """Its Jobs API runs whatever it is sent; the submitter and the operator get the dashboard port
    (8265) and nothing else, every other pod no port at all."""
    name, objects = rendered
    policies, found = only(objects, "NetworkPolicy"), endpoints(objects)
    head = found["ray-head"]
    ports = sorted(set(head.ports.values()) | {52365, 8080, RAY_WORKER_PORT})
    for who in ("stranger", "foreign pod", "mlflow", "postgres"):
        assert not [p for p in ports if allowed(policies, found[who], head, p)], f"{name}: {who} reaches the head"
    for who in roles(found, "submitter") + ["kuberay-operator"]:
        assert [p for p in ports if allowed(policies, found[who], head, p)] == [8265], f"{name}: {who}"
    for worker in roles(found, "ray-worker"):
        for who in ("stranger", "foreign pod", "mlflow", "postgres", "kuberay-operator", *roles(found, "submitter")):
            reached = [p for p in ports if allowed(policies, found[who], found[worker], p)]
            assert not reached, f"{name}: {who} -> {worker} on {reached}"


def test_postgres_and_mlflow_admit_only_their_clients(rendered):
    name, objects = rendered
    policies, found = only(objects, "NetworkPolicy"), endpoints(objects)
    mlflow_clients = {"ray-head", *roles(found, "ray-worker"), *roles(found, "submitter")}
    for who, endpoint in found.items():
        if endpoint.namespace is None or who in ("mlflow", "postgres"):
            continue
        assert allowed(policies, endpoint, found["postgres"], 5432) is False, f"{name}: {who} reaches Postgres"
        assert allowed(policies, endpoint, found["mlflow"], 5000) is (who in mlflow_clients), f"{name}: {who}"
    assert allowed(policies, found["mlflow"], found["postgres"], 5432)


def test_only_the_ray_head_leaves_the_pod_network(rendered):
    """The head's autoscaler needs the API server, whose address differs per cluster, so its rule
    names ports only (443, 6443): that also lets the head reach those ports anywhere. No other pod
    gets out."""
    name, objects = rendered
    policies, found = only(objects, "NetworkPolicy"), endpoints(objects)
    for who, endpoint in found.items():
        if endpoint.namespace == NAMESPACE:
            for outside, port in (("kubernetes-api", KUBERNETES_API[1]), ("internet", INTERNET[1])):
                assert allowed(policies, endpoint, found[outside], port) is (who == "ray-head"), f"{name}: {who}"


# --- docs/deploy.md ------------------------------------------------------------------------------------

KIND_NAMES = {"rayjob": "RayJob", "raycluster": "RayCluster", "statefulset": "StatefulSet",
              "deployment": "Deployment", "svc": "Service", "service": "Service", "job": "Job", "secret": "Secret",
              "secrets": "Secret", "pod": "Pod", "crd": "CustomResourceDefinition", "pvc": "PersistentVolumeClaim"}
VALUE_OPTIONS = {"-n", "--namespace", "-l", "--selector", "-o", "--output", "-c", "--container", "-k",
                 "--kustomize", "--from-literal"}
COMMAND_WORDS = ("kubectl", "kustomize", "make", "helm")


def doc_lines(text: str) -> list[str]:
    """The shell lines of a Markdown text: its code blocks' (continuations joined) and its inline
    code spans that start with a command."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)
    lines = [line for block in blocks for line in re.sub(r"\\\n\s*", " ", block).splitlines()]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return lines + [s for s in re.findall(r"`([^`\n]+)`", prose) if s.split()[0] in COMMAND_WORDS]


def shell_commands(line: str) -> list[list[str]]:
    """The argv of every simple command on a shell line, those inside $(...) included, without
    leading `export` and VAR=value words."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in (";", "&&", "||", "|", "&", "(", ")"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    found = []
    for argv in commands:
        for token in argv:
            if "$(" in token:
                found += shell_commands(token[token.index("$(") + 2:token.rindex(")")])
        while argv and (argv[0] == "export" or re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0])):
            argv = argv[1:]
        if argv:
            found.append(argv)
    return found


@functools.cache
def crd_names() -> frozenset[str]:
    return frozenset(re.search(r"^  name: (\S+)", (CRD_DIR / f).read_text(), re.M).group(1) for f in CRD_FILES.values())


def known_objects(objects) -> dict[str, set[str]]:
    """What exists once an overlay is applied: its objects, what KubeRay makes of them (the head
    Service, the token Secret it names after the cluster, the submitter Job it names after the
    RayJob), the Secrets the doc has you create, and the CRDs."""
    known: dict[str, set[str]] = {}
    for obj in objects:
        known.setdefault(obj["kind"], set()).add(obj["metadata"]["name"])
    for cluster in only(objects, "RayCluster"):
        known.setdefault("Service", set()).add(head_service(cluster)["metadata"]["name"])
        if (cluster["spec"].get("authOptions") or {}).get("mode") == "token":
            known.setdefault("Secret", set()).add(cluster["metadata"]["name"])
    known["Job"] = {j["metadata"]["name"] for j in only(objects, "RayJob")}
    known.setdefault("Secret", set()).update(e["valueFrom"]["secretKeyRef"]["name"] for c in containers(objects)
                                             for e in c.get("env", []) if "secretKeyRef" in (e.get("valueFrom") or {}))
    known["CustomResourceDefinition"] = set(crd_names())
    return known


def kubectl_problems(argv: list[str], scope: list[str]) -> list[str]:
    """What would not work in `argv` against the overlays in `scope`."""
    options, positional, remote = {}, [], []
    tokens = iter(argv[1:])
    for token in tokens:
        if token == "--":
            remote = list(tokens)
            break
        if token.startswith("-"):
            key, equals, value = token.partition("=")
            options[key] = value if equals else (next(tokens) if key in VALUE_OPTIONS else True)
        else:
            positional.append(token)
    problems = []
    command = " ".join(argv)
    path = (options.get("-k") or options.get("--kustomize")
            or (positional[1] if positional[:1] == ["kustomize"] else None))
    if path:
        matches = [n for n, folder in OVERLAYS.items() if (REPO / path).resolve() == folder.resolve()]
        if not matches:
            problems.append(f"{command}: {path} is not an overlay")
        scope = matches or scope
    if options.get("-n", options.get("--namespace", NAMESPACE)) != NAMESPACE:
        problems.append(f"{command}: not namespace {NAMESPACE}")
    verb, references = (positional or [None])[0], []
    if verb in ("get", "delete", "describe") and len(positional) > 1 and "/" not in positional[1]:
        kinds = positional[1].split(",")
        problems += [f"{command}: unknown kind {k}" for k in kinds if k not in KIND_NAMES]
        references += [(k, n) for k in kinds for n in positional[2:]]
    if positional[:2] == ["create", "namespace"] and positional[2] != NAMESPACE:
        problems.append(f"{command}: the overlays use namespace {NAMESPACE}")
    if positional[:3] == ["create", "secret", "generic"]:
        references.append(("secret", positional[3]))
    references += [tuple(t.split("/", 1)) for t in positional[1:] if re.fullmatch(r"[a-z]+/[\w.-]+", t)]
    for overlay in scope:
        objects = render(overlay)
        known = known_objects(objects)
        for kind, name in references:
            if kind not in KIND_NAMES or name not in known.get(KIND_NAMES[kind], ()):
                problems.append(f"{command}: the {overlay} overlay has no {kind} {name}")
        if selector := options.get("-l") or options.get("--selector"):
            wanted = dict(part.split("=", 1) for part in selector.split(","))
            if not any(e.namespace == NAMESPACE and selects({"matchLabels": wanted}, e.labels)
                       for e in endpoints(objects).values()):
                problems.append(f"{command}: no pod of the {overlay} overlay has labels {selector}")
        if container := options.get("-c") or options.get("--container"):
            for kind, name in references:
                if kind == "job":
                    template = only(objects, "RayJob", name)[0]["spec"]["submitterPodTemplate"]
                    if container not in {c["name"] for c in template_containers(template)}:
                        problems.append(f"{command}: the submitter pod of {name} has no container {container}")
        if verb == "port-forward" and len(positional) == 3:
            service = next(s for s in services(objects) if s["metadata"]["name"] == positional[1].split("/", 1)[1])
            remote_port = int(positional[2].split(":")[-1])
            if remote_port not in {p["port"] for p in service["spec"]["ports"]}:
                problems.append(f"{command}: {service['metadata']['name']} has no port {remote_port}")
    if remote[:1] == ["igmu"]:
        resolve_command(remote)
    return problems


def test_deploy_doc_commands_work_as_written_with_kubectl_alone():
    """`kustomize edit` is not part of kubectl; every object a command names must exist in the
    overlay it is for (a trailing `# dev overlay` / `# gpu overlay` comment; otherwise in both)."""
    text = DEPLOY_DOC.read_text()
    assert "kustomize edit" not in text
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    problems, count = [], 0
    for line in doc_lines(text):
        scope = sorted(set(re.findall(r"#.*?\b(dev|gpu) overlay\b", line))) or sorted(OVERLAYS)
        for argv in shell_commands(line):
            if argv[0] == "kustomize":
                problems.append(f"{' '.join(argv)}: kubectl has no `kustomize` subcommands besides building")
            elif argv[0] == "kubectl":
                count += 1
                problems += kubectl_problems(argv, scope)
            elif argv[0] == "make":
                problems += [f"no make target {a}" for a in argv[1:] if "=" not in a and a not in targets]
            elif argv[0] == "helm" and "--version" in argv:
                assert argv[argv.index("--version") + 1] == KUBERAY_VERSION
            if argv[0] != "kubectl" and "--" in argv and argv[argv.index("--") + 1:][:1] == ["igmu"]:
                resolve_command(argv[argv.index("--") + 1:])
    assert count >= 15, "the doc's kubectl commands were not found"
    assert problems == []


def test_the_doc_command_check_catches_a_wrong_name_and_kustomize_edit():
    bad = [*shell_commands("kubectl -n igmu get rayjob igmu-sweep-salun -w"),
           *shell_commands('HEAD=$(kubectl -n igmu get pod -l ray.io/cluster=nope -o name)')]
    assert kubectl_problems(bad[0], ["gpu"]) and not kubectl_problems(bad[0], ["dev"])
    assert kubectl_problems(bad[1], ["dev"])
    assert shell_commands("cd k8s/overlays/gpu && kustomize edit set image igmu=x")[1][0] == "kustomize"


def deployed_table(text: str) -> list[tuple[list[str], list[str]]]:
    """(kinds, names) per row of the doc's "What gets deployed" table."""
    section = text.split("## What gets deployed", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith(("`", "headless")):
            rows.append((re.findall(r"`([A-Za-z]+)`", cells[0]), re.findall(r"`([\w.-]+)`", cells[1])))
    return rows


def test_deploy_doc_lists_what_the_overlays_deploy_and_nothing_else():
    rows = deployed_table(DEPLOY_DOC.read_text())
    assert rows
    rendered_keys = {(o["kind"], o["metadata"]["name"]) for overlay in OVERLAYS for o in render(overlay)}
    listed = {(kind, name) for kinds, names in rows for kind in kinds for name in names}
    assert listed <= rendered_keys, sorted(listed - rendered_keys)
    workloads = {k for k in rendered_keys
                 if k[0] in ("RayCluster", "RayJob", "Deployment", "StatefulSet", "NetworkPolicy")}
    assert workloads <= listed, sorted(workloads - listed)
