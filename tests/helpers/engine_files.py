"""Where the engine distribution keeps its data files (model configs, shipped checkpoints)."""

from __future__ import annotations

from pathlib import Path

import liteembed

ENGINE_DIR = Path(liteembed.__file__).resolve().parent
