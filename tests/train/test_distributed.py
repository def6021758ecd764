"""Two CPU processes (torchrun, gloo) with batch B == one process with batch 2B."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(nproc: int, out: Path, batch: int, steps: int) -> dict[str, torch.Tensor]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(WORKER),
        str(out),
        str(batch),
        str(steps),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(out))


@pytest.mark.distributed
@pytest.mark.slow  # two torchrun launches: ~20 s idle, more on a loaded machine
def test_two_processes_match_one_with_double_batch(tmp_path):
    two = _run(2, tmp_path / "two.safetensors", batch=32, steps=8)
    one = _run(1, tmp_path / "one.safetensors", batch=64, steps=8)
    assert int(two.pop("world_size")) == 2 and int(one.pop("world_size")) == 1
    assert two.keys() == one.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    w, w0 = one["model.proj_in.weight"], one["init.proj_in.weight"]
    assert float((w - w0).abs().max()) > 1e-2  # training moved the weights well beyond tolerance
