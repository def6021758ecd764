"""Drill: a crafted run directory must not execute anything under open_run / sample.

Every payload below would leave a trace if built (a sentinel file, a truncated victim file);
each must be refused with one error naming the key path and the target, before anything is
built. Payloads: builtins.open (truncates), torch.load with weights_only false and numpy.load
with allow_pickle (unpickle a payload), os.system, subprocess.run, eval, nested targets,
``_partial_`` and ``_args_`` variants, an attribute path through a polydiff module to os.system,
polydiff's own file writers, interpolations, and the same through overrides.json.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from polydiff.train.config import ConfigError
from polydiff.train.run import open_run
from polydiff.train.safe_config import UnsafeConfigError, check_config

COUNTS: dict[str, list[int]] = {}  # drill -> [trials, held] (printed by conftest.py)


class _Touch:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _payloads(tmp: Path, sentinel: Path, victim: Path) -> dict[str, tuple[str, dict]]:
    evil_pt, evil_npy = tmp / "evil.pt", tmp / "evil.npy"
    evil_pt.write_bytes(pickle.dumps({"w": _Touch(sentinel)}))
    evil_npy.write_bytes(pickle.dumps(np.array([_Touch(sentinel)], dtype=object)))
    touch = f"touch {sentinel}"
    return {  # name: (key to replace, node)
        "open_truncates": (
            "model",
            {"_target_": "builtins.open", "file": str(victim), "mode": "w"},
        ),
        "torch_load_pickle": (
            "model",
            {"_target_": "torch.load", "f": str(evil_pt), "weights_only": False},
        ),
        "numpy_load_pickle": (
            "data",
            {"dataset": {"_target_": "numpy.load", "file": str(evil_npy), "allow_pickle": True}},
        ),
        "os_system": ("objective", {"_target_": "os.system", "command": touch}),
        "subprocess_run": (
            "objective",
            {"_target_": "subprocess.run", "args": ["touch", str(sentinel)]},
        ),
        "eval": (
            "objective",
            {"_target_": "builtins.eval", "_args_": [f"__import__('os').system('{touch}')"]},
        ),
        "nested": (
            "model",
            {
                "_target_": "polydiff.nn.mlp.ResidualMLP",
                "dim": {"_target_": "os.system", "command": touch},
            },
        ),
        "partial": ("objective", {"_target_": "os.system", "_partial_": True}),
        "args_in_allowed_partial": (
            "model",
            {
                "_target_": "functools.partial",
                "_args_": [{"_target_": "hydra.utils.get_method", "path": "os.system"}, touch],
            },
        ),
        "attribute_path_bypass": (
            "model",
            {"_target_": "polydiff.train.checkpoint.os.system", "command": touch},
        ),
        "torch_attribute_bypass": (
            "model",
            {"_target_": "torch.serialization.load", "f": str(evil_pt), "weights_only": False},
        ),
        "polydiff_file_writer": (
            "model",
            {
                "_target_": "polydiff.core.fileio.atomic_write_text",
                "target": str(victim),
                "text": "",
            },
        ),
        "deep_list": (
            "model",
            {
                "_target_": "polydiff.nn.mlp.ResidualMLP",
                "extra": [[{"_target_": "posix.system", "command": touch}]],
            },
        ),
        "interpolation": (
            "model",
            {"_target_": "polydiff.nn.mlp.ResidualMLP", "dim": "${oc.env:HOME}"},
        ),
        "non_string_target": ("model", {"_target_": {"evil": 1}}),
    }


def test_every_payload_is_refused_by_the_check(tiny_run, tmp_path):
    """Fast: the config check alone, on each payload spliced into the saved config."""
    sentinel, victim = tmp_path / "pwned", tmp_path / "victim.txt"
    victim.write_text("precious")
    saved = yaml.safe_load((tiny_run / "config.yaml").read_text())
    payloads = _payloads(tmp_path, sentinel, victim)
    for name, (key, node) in payloads.items():
        cfg = json.loads(json.dumps(saved))
        cfg[key] = node if key != "data" else {**cfg["data"], **node}
        with pytest.raises(UnsafeConfigError, match=rf"{key}") as info:
            check_config(cfg, tiny_run)
        assert "\n" not in str(info.value), name
    check_config(saved, tiny_run)  # the untouched run passes
    assert not sentinel.exists() and victim.read_text() == "precious"


@pytest.mark.slow
def test_malicious_run_dirs_are_refused_before_anything_is_built(tiny_run, tmp_path):
    sentinel, victim = tmp_path / "pwned", tmp_path / "victim.txt"
    victim.write_text("precious")
    saved = yaml.safe_load((tiny_run / "config.yaml").read_text())
    payloads = _payloads(tmp_path, sentinel, victim)
    held = 0
    for name, (key, node) in payloads.items():
        cfg = json.loads(json.dumps(saved))
        cfg[key] = node if key != "data" else {**cfg["data"], **node}
        (tiny_run / "config.yaml").write_text(yaml.safe_dump(cfg))
        with pytest.raises(UnsafeConfigError) as info:
            open_run(tiny_run)
        msg = str(info.value)
        assert str(tiny_run) in msg and key in msg and "\n" not in msg, (name, msg)
        assert not sentinel.exists() and victim.read_text() == "precious", name
        held += 1
        COUNTS["malicious run directories"] = [len(payloads), held]
    assert held == len(payloads) == 15


def test_malicious_overrides_json_is_refused(tiny_run, tmp_path):
    sentinel = tmp_path / "pwned"
    (tiny_run / "overrides.json").write_text(
        json.dumps({"overrides": ["experiment=toy/gmm", "+sampler.schedule._target_=os.system"]})
    )
    with pytest.raises(ConfigError):  # refused, whichever check sees it first
        open_run(tiny_run)
    assert not sentinel.exists()


@pytest.mark.slow
def test_the_allow_list_accepts_every_shipped_config():
    from polydiff.train.config import compose, find_config_dir

    root = find_config_dir()
    names = sorted(
        p.relative_to(root / "experiment").with_suffix("")
        for p in (root / "experiment").rglob("*.yaml")
    )
    assert names
    for name in names:
        check_config(compose([f"experiment={name}"]), f"experiment={name}")  # must not raise


def test_cli_prints_one_line_for_a_malicious_run(tiny_run, tmp_path):
    sentinel = tmp_path / "pwned"
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    cfg["model"] = {"_target_": "os.system", "command": f"touch {sentinel}"}
    (tiny_run / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "polydiff_apps.cli", "sample", f"run={tiny_run}"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode != 0 and not sentinel.exists()
    assert "Traceback" not in proc.stderr and "model._target_" in proc.stderr, proc.stderr
