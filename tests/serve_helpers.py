"""What the Serve tests need beyond the package: PNG request bodies and the running replicas' names."""

from __future__ import annotations

import base64
import io

import numpy as np


def encode_png(image_hwc: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image_hwc).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def replica_actor_names() -> list[str]:
    """Actor names of the judges deployment's running replicas (to kill one in a test)."""
    from igmu.serve.control import RUNNING, _deployment_details, _state, serve_details

    deployment = _deployment_details(serve_details())
    return [r["actor_name"] for r in deployment.get("replicas", []) if _state(r.get("state")) == RUNNING]
