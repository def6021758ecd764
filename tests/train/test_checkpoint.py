"""Checkpoints: safetensors + JSON, atomic writes, clear errors, no code execution on load."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from polydiff.train.checkpoint import (
    CheckpointError,
    flatten_optimizer_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint_files,
    load_tensors,
    save_checkpoint_files,
    unflatten_optimizer_state,
)


def test_optimizer_state_roundtrip_is_exact():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for _ in range(3):
        net(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    assert set(tensors) == {
        f"state.{i}.{k}" for i in (0, 1) for k in ("step", "exp_avg", "exp_avg_sq")
    }
    restored = unflatten_optimizer_state(tensors, meta)
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=5.0)
    opt2.load_state_dict(restored)
    assert opt2.param_groups[0]["lr"] == 1e-2 and opt2.param_groups[0]["betas"] == (0.8, 0.95)
    for a, b in zip(opt.state.values(), opt2.state.values()):
        for k in a:
            assert torch.equal(a[k], b[k])


def _save(root: Path, step: int, value: float) -> Path:
    return save_checkpoint_files(
        root, step, {"model": {"w": torch.full((4,), value)}}, {"step": step}
    )


def test_save_load_and_latest(tmp_path):
    _save(tmp_path, 5, 1.0)
    _save(tmp_path, 10, 2.0)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000005", "step_00000010"]
    tensors, state = load_checkpoint_files(latest_checkpoint(tmp_path))
    assert state["step"] == 10 and torch.equal(tensors["model"]["w"], torch.full((4,), 2.0))


def test_interrupted_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 5, 1.0)
    import polydiff.train.checkpoint as ck

    def exploding_dumps(*a, **k):
        raise KeyboardInterrupt("killed while writing state.json")

    monkeypatch.setattr(ck.json, "dumps", exploding_dumps)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 10, 2.0)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000005"]  # no partial dir left
    tensors, state = load_checkpoint_files(latest_checkpoint(tmp_path))
    assert state["step"] == 5 and float(tensors["model"]["w"][0]) == 1.0


def test_overwriting_same_step_is_atomic(tmp_path, monkeypatch):
    _save(tmp_path, 5, 1.0)
    import polydiff.train.checkpoint as ck

    real_rename = os.rename
    calls = []

    def failing_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the rename that would publish the new copy
            raise OSError("disk went away")
        return real_rename(src, dst)

    monkeypatch.setattr(ck.os, "rename", failing_rename)
    with pytest.raises(OSError):
        _save(tmp_path, 5, 9.0)
    monkeypatch.undo()
    # the old copy was moved aside, then put back: still listed, verified, with its values
    tensors, _ = load_checkpoint_files(latest_checkpoint(tmp_path))
    assert float(tensors["model"]["w"].flatten()[0]) == 1.0


def test_truncated_and_missing_files_are_named(tmp_path):
    path = _save(tmp_path, 5, 1.0)
    model = path / "model.safetensors"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated.*model\.safetensors"):
        load_checkpoint_files(path)
    model.unlink()
    with pytest.raises(CheckpointError, match=r"missing: .*model\.safetensors"):
        load_checkpoint_files(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint_files(tmp_path / "step_00000099")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match=r"junk\.safetensors"):
        load_tensors(tmp_path / "junk.safetensors")


class _Evil:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_that_executes_code_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"w": _Evil(sentinel)}, fh)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_tensors(evil)
    assert not sentinel.exists()
    # the same pickle disguised as a checkpoint's safetensors file is refused too
    path = _save(tmp_path / "ckpts", 1, 1.0)
    (path / "model.safetensors").write_bytes(evil.read_bytes())
    manifest = json.loads((path / "manifest.json").read_text())  # sizes made consistent
    manifest["files"]["model.safetensors"]["bytes"] = evil.stat().st_size
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        CheckpointError, match=r"SHA-256.*model\.safetensors|model\.safetensors.*SHA"
    ):
        load_checkpoint_files(path)
    from polydiff.train.checkpoint import sha256_file  # hash made consistent too: still refused

    manifest["files"]["model.safetensors"]["sha256"] = sha256_file(path / "model.safetensors")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError):
        load_checkpoint_files(path)
    assert not sentinel.exists()
    # a plain tensor pickle is fine
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_tensors(tmp_path / "ok.pt")["w"], torch.ones(2))
