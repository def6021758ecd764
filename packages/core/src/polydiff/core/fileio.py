"""Atomic file writes: the one home of the temp-file + fsync + rename sequence.

Every file polydiff hands to a user (checkpoints, samples, caches, results, datasets) is written
to a temporary name in the target's own directory and renamed over the target only once it is
complete and on disk, so a crash, a full disk or a kill never leaves a half-written file under
the real name. Standard library only (the core depends on torch and numpy, nothing else).

    with atomic_path(out / "samples.npz") as tmp:      # any writer that takes a path
        np.savez(tmp, **arrays)
    atomic_write_text(out / "sample.json", json.dumps(meta))
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    The temporary name keeps ``target``'s suffix (``x.npz`` -> ``.x.<id>.tmp.npz``) so writers
    that pick a format from the extension (``np.savez``, PIL, soundfile) behave as for the
    target. On an exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}.tmp{target.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_path: the writer did not create {tmp} for {target}")
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
        if fsync:
            fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(target: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``target`` atomically; returns ``target`` as a Path."""
    with atomic_path(target, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(
    target: str | os.PathLike, text: str, *, encoding: str = "utf-8", fsync: bool = True
) -> Path:
    """Write ``text`` to ``target`` atomically; returns ``target`` as a Path."""
    return atomic_write_bytes(target, text.encode(encoding), fsync=fsync)
