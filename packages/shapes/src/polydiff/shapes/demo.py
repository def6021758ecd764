"""``polydiff demo`` shapes part: class-conditional point clouds, wavelet SDF meshes, completion.

The recipes are ``configs/experiment/shapes/points_class`` (set transformer over 256 points of
chairs and tables) and ``configs/experiment/shapes/sdf_wavelet`` (3-D U-Net over Haar wavelet
coefficients of 16^3 SDFs), trained, sampled, evaluated and completed through
``polydiff.train.run`` / ``polydiff complete``, as ``polydiff train experiment=shapes/<name>`` then
``polydiff sample|evaluate|complete run=<dir>`` do. The demo only quiets the recipes; quick mode
also shrinks them (:data:`QUICK`). Outputs: ``points_renders.png`` (+ PLY / OBJ per sample),
``sdf_renders.png`` (+ OBJ / GLB meshes), ``completion.png``, ``metrics.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from polydiff.core.fileio import atomic_write_text
from polydiff.train.run import evaluate_run, sample_run, train

from .pipeline import complete_run

__all__ = ["DEMO", "QUICK", "run"]

DEMO = ["trainer.progress=false", "trainer.ckpt_every=0"]
QUICK = [
    *DEMO,
    "trainer.max_steps=150",
    "data.source.per_class=40",
    "data.source.test_per_class=10",
]
EVAL = {False: ["evaluate.n=200"], True: ["evaluate.n=20"]}


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Train both recipes, sample, mesh, evaluate and complete; returns the metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = QUICK if quick else DEMO
    summary: dict[str, Any] = {"quick": quick, "experiments": {}}
    for name, files in (("points_class", "points"), ("sdf_wavelet", "sdf")):
        t0 = time.perf_counter()
        run_dir = train([f"experiment=shapes/{name}", *overrides], run_dir=out_dir / f"run_{name}")
        t_train = time.perf_counter() - t0
        samples = sample_run(run_dir, ["sample.n=8"], out=out_dir / f"samples_{name}")
        shutil.copy(samples / "renders.png", out_dir / f"{files}_renders.png")
        result = evaluate_run(run_dir, EVAL[quick], out=out_dir / f"eval_{name}.json")
        summary["experiments"][name] = {
            "run": str(run_dir),
            "train_seconds": round(t_train, 1),
            "metrics": result["metrics"],
            "samples": str(samples),
        }
        if name == "points_class":
            n = 8 if quick else 50
            comp = complete_run(str(run_dir), [f"complete.n={n}"], out=str(out_dir / "completion"))
            shutil.copy(out_dir / "completion" / "completion.png", out_dir / "completion.png")
            summary["completion"] = {
                k: comp[k] for k in ("chamfer_completion", "chamfer_nearest_training_shape", "n")
            }
    atomic_write_text(out_dir / "metrics.json", json.dumps(summary, indent=1))
    return {
        "files": [str(out_dir / f) for f in ("points_renders.png", "sdf_renders.png",
                                              "completion.png", "metrics.json")],
        "metrics": {k: v["metrics"].get("1-NNA-CD") for k, v in summary["experiments"].items()},
    }  # fmt: skip
