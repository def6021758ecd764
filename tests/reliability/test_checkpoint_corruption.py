"""Drill: corrupt, truncated, byte-flipped and hand-edited checkpoints, interrupted pruning.

Every damaged checkpoint must be refused with one line naming the file (never loaded into a
model, never a raw JSONDecodeError / KeyError / shape error), on resume, on open_run and in the
post-hoc EMA path; a checkpoint is only written if its weights are finite.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

import polydiff.train.checkpoint as ck
from polydiff.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint_files,
    save_checkpoint_files,
    sha256_file,
)
from polydiff.train.ema import load_weights
from polydiff.train.run import open_run, train

COUNTS: dict[str, list[int]] = {}  # drill -> [trials, held] (printed by conftest.py)


def _files(ckpt: Path) -> list[str]:
    return sorted(json.loads((ckpt / "manifest.json").read_text())["files"])


def test_byte_flips_and_truncations_are_named(tiny_run):
    ckpt = latest_checkpoint(tiny_run / "checkpoints")
    rng = random.Random(0)
    trials = held = 0
    for name in _files(ckpt):
        path = ckpt / name
        original = path.read_bytes()
        for _ in range(3):  # three random single-byte flips per file
            data = bytearray(original)
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(data))
            trials += 1
            with pytest.raises(CheckpointError, match=rf"corrupt or modified: .*{name}"):
                load_checkpoint_files(ckpt)
            held += 1
        path.write_bytes(original[: len(original) // 2])
        trials += 1
        with pytest.raises(CheckpointError, match=rf"truncated or modified: .*{name}"):
            load_checkpoint_files(ckpt)
        held += 1
        path.write_bytes(original)
    COUNTS["checkpoint byte flips + truncations"] = [trials, held]
    assert trials == held == 4 * len(_files(ckpt)) == 20
    load_checkpoint_files(ckpt)  # restored: fine again


def test_flipped_weights_refused_on_open_run_resume_and_posthoc(tiny_run, tiny_overrides):
    ckpt = latest_checkpoint(tiny_run / "checkpoints")
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        open_run(tiny_run, ema=False)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        train([*tiny_overrides, "trainer.max_steps=8"], run_dir=tiny_run)  # resume
    weights.write_bytes(bytes(data[:-3]) + bytes([data[-3] ^ 0x40]) + bytes(data[-2:]))
    snap = sorted((tiny_run / "ema_snapshots").iterdir())[0]
    snap.write_bytes(snap.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match=rf"snapshot.*{snap.name}"):
        load_weights(ckpt, "sigma_rel:0.07")
    assert load_weights(ckpt, "sigma_rel:0.05")[1] == "ema:sigma_rel:0.05"  # stored: no snapshot


def _rewrite(ckpt: Path, name: str, content: bytes) -> None:
    """Replace a file and make the manifest agree (a hand-edited checkpoint)."""
    (ckpt / name).write_bytes(content)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": len(content), "sha256": sha256_file(ckpt / name)}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("state", "match"),
    [
        (b"", r"state\.json is empty"),
        (b'{"step": 6, "data_pos', r"state\.json is not valid JSON"),
        (b"[1, 2]", r"state\.json: expected a JSON object"),
        (b'{"step": 6}', r"state\.json lacks the keys"),
    ],
)
def test_bad_state_json_is_named(tiny_run, tiny_overrides, state, match):
    ckpt = latest_checkpoint(tiny_run / "checkpoints")
    _rewrite(ckpt, "state.json", state)
    with pytest.raises(CheckpointError, match=match):
        train([*tiny_overrides, "trainer.max_steps=8"], run_dir=tiny_run)


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        ({"format_version": 2, "step": 6}, r"manifest\.json lists no files"),
        ({"format_version": 2, "step": 6, "files": {}}, r"manifest\.json lists no files"),
        ({"format_version": 7, "files": {"a": 1}}, r"unknown checkpoint format 7"),
        ({"format_version": 2, "files": {"model.safetensors": 12}}, r"entry of 'model"),
        ({"format_version": 2, "files": {"../x": {"bytes": 1}}}, r"invalid file name"),
        ("not json", r"manifest\.json is not valid JSON"),
        ([], r"manifest\.json: expected a JSON object"),
    ],
)
def test_bad_manifest_is_named(tmp_path, manifest, match):
    ckpt = save_checkpoint_files(tmp_path, 6, {"model": {"w": torch.ones(3)}}, {"step": 6})
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (ckpt / "manifest.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint_files(ckpt)


def test_only_finite_weights_make_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"refusing to write checkpoint step 2: model .*'w'"):
        save_checkpoint_files(tmp_path, 2, {"model": {"w": torch.tensor([1.0, float("inf")])}}, {})
    assert list_checkpoints(tmp_path) == []
    # a hand-made checkpoint with consistent hashes but infinite weights is refused on load
    from safetensors.torch import save

    ckpt = save_checkpoint_files(tmp_path, 1, {"model": {"w": torch.ones(2)}}, {"step": 1})
    _rewrite(ckpt, "model.safetensors", save({"w": torch.tensor([1.0, float("nan")])}))
    with pytest.raises(CheckpointError, match=r"weights are not finite \('w'"):
        load_weights(ckpt, False)


def test_a_kill_while_pruning_leaves_nothing_listed_half_deleted(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        save_checkpoint_files(
            tmp_path, step, {"model": {"w": torch.full((2,), float(step))}}, {"step": step}
        )

    def killed(path, *a, **k):  # the process dies right after the rename, mid-delete
        for f in list(Path(path).iterdir())[:1]:
            f.unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        ck.prune_checkpoints(tmp_path, keep_last=2)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    for ckpt in list_checkpoints(tmp_path):
        load_checkpoint_files(ckpt)  # every listed one is complete
    ck.prune_checkpoints(tmp_path, keep_last=2)  # the next prune clears the trash
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    shutil.rmtree(tmp_path / "step_00000002")
