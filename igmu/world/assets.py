"""Where the shipped world assets (generators and judges) are read from."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_ENV = "IGMU_ASSETS"
SHIPPED_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "world"


def assets_dir() -> Path:
    """The shipped assets folder, or the one `IGMU_ASSETS` names."""
    return Path(os.environ.get(ASSETS_ENV, SHIPPED_ASSETS))
