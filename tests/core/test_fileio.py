"""polydiff.core.fileio: atomic writes leave either the old file or the complete new one."""

from __future__ import annotations

import numpy as np
import pytest

from polydiff.core.fileio import atomic_path, atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


def test_failed_writer_keeps_old_file(tmp_path):
    target = tmp_path / "x.npz"
    np.savez(target, a=np.arange(3))
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        np.savez(tmp, a=np.arange(5))
        raise RuntimeError("boom")
    assert np.load(target)["a"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]


def test_suffix_kept_for_format_detection(tmp_path):
    target = tmp_path / "arrays.npz"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path
        np.savez(tmp, b=np.ones(2))  # np.savez would append .npz to a name without it
    assert np.load(target)["b"].sum() == 2


def test_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="did not create"), atomic_path(tmp_path / "y.bin"):
        pass
    assert not (tmp_path / "y.bin").exists()
