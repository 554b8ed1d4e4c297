"""Render the kustomize folders under k8s/ without the kustomize binary (CI has only Python).

It implements exactly the subset k8s/ uses, and refuses anything else so a new kustomize feature
cannot be silently ignored: `resources` (files and folders), `namespace`, `patches` with a
`target` (kind, name) and an inline JSON 6902 patch (add, remove, replace), and `images` (what
`kustomize edit set image` writes; like kustomize it rewrites every `containers` and
`initContainers` entry, custom resources included). tests/test_k8s.py compares its output with
`kubectl kustomize` wherever that tool is installed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "patches", "images"}
CLUSTER_SCOPED_KINDS = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                        "PersistentVolume", "StorageClass"}


class KustomizeError(ValueError):
    pass


def build(folder: Path) -> list[dict]:
    """The objects `kustomize build folder` would emit (order aside)."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(spec) - SUPPORTED_KEYS
    if unsupported:
        raise KustomizeError(f"{folder}: unsupported kustomization keys {sorted(unsupported)}")
    objects: list[dict] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        objects += build(path) if path.is_dir() else [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in spec.get("patches", []):
        _apply_patch(objects, patch, folder)
    for image in spec.get("images", []):
        for container in _containers(objects):
            _set_image(container, image)
    if spec.get("namespace"):
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return objects


def _apply_patch(objects: list[dict], patch: dict, folder: Path) -> None:
    if set(patch) != {"target", "patch"} or set(patch["target"]) - {"kind", "name"}:
        raise KustomizeError(f"{folder}: only inline JSON 6902 patches with a kind/name target are supported")
    target = patch["target"]
    matches = [obj for obj in objects if obj["kind"] == target.get("kind", obj["kind"])
               and obj["metadata"]["name"] == target.get("name", obj["metadata"]["name"])]
    if not matches:
        raise KustomizeError(f"{folder}: patch target {target} matches no resource")
    operations = yaml.safe_load(patch["patch"])
    for obj in matches:
        for operation in operations:
            _apply_operation(obj, operation)


def _apply_operation(obj: dict, operation: dict) -> None:
    op, tokens = operation["op"], _pointer(operation["path"])
    parent = obj
    for token in tokens[:-1]:
        parent = parent[int(token)] if isinstance(parent, list) else parent[token]
    last = tokens[-1]
    if op == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    elif op in ("add", "replace"):
        value = copy.deepcopy(operation["value"])
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op == "add":
                parent.insert(index, value)
            else:
                parent[index] = value
        else:
            if op == "replace" and last not in parent:
                raise KustomizeError(f"replace of missing path {operation['path']}")
            parent[last] = value
    else:
        raise KustomizeError(f"unsupported JSON patch op {op!r}")


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with '/'")
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def _containers(node):
    """Every container spec under node, at any depth (pod templates nest differently per kind)."""
    if isinstance(node, list):
        for item in node:
            yield from _containers(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict) and "image" in c)
            else:
                yield from _containers(value)


def _set_image(container: dict, image: dict) -> None:
    if set(image) - {"name", "newName", "newTag", "digest"}:
        raise KustomizeError(f"unsupported images entry {image}")
    reference = container["image"]
    name, _, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    repository, tag = (name[:colon], name[colon + 1:]) if colon > slash else (name, "")
    if repository != image["name"]:
        return
    repository = image.get("newName", repository)
    if "digest" in image:
        container["image"] = f"{repository}@{image['digest']}"
        return
    tag = image.get("newTag", tag)
    container["image"] = f"{repository}:{tag}" if tag else repository
