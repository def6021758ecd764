"""Run directories, metric logs (JSONL, optional TensorBoard) and config hashing."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["MetricLogger", "config_delta_hash", "make_run_dir"]


def _stable_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_delta_hash(delta: Mapping[str, Any], length: int = 8) -> str:
    """Short hash of a config delta (``{dotted.key: value}``), audiocraft-style run signature."""
    return hashlib.sha1(_stable_json(dict(delta)).encode()).hexdigest()[:length]


def make_run_dir(root: str | Path, experiment: str, signature: str) -> Path:
    """Create ``<root>/<experiment>/<YYYYmmdd-HHMMSS>-<signature>/`` (unique)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / experiment
    path = base / f"{stamp}-{signature}"
    i = 1
    while path.exists():
        path = base / f"{stamp}-{signature}-{i}"
        i += 1
    path.mkdir(parents=True)
    return path


class MetricLogger:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # pragma: no cover - optional extra
                raise ImportError(
                    "trainer.tensorboard=true needs the tensorboard package "
                    "(pip install 'polydiff-train[tensorboard]')"
                ) from err
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()})
        self._fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
