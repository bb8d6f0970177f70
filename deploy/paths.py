"""Where things live by default on a Hero OS host (overridable by environment)."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> Path:
    return Path(os.environ.get("AIBROKER_DATA_DIR", "~/hero/var/hero_aibroker/")).expanduser()
