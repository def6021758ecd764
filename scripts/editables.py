"""Print pip arguments installing every polydiff distribution editable with all its extras.

Discovers ``packages/*/pyproject.toml`` and ``apps/pyproject.toml``: adding a package folder
is all it takes to have ``make setup`` install it.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def editable_specs() -> list[str]:
    """Return ``-e path[extras]`` arguments in layer order: core, nn, train, modalities, apps.

    (pip 23's resolver can miss an editable with extras named after a package that needs it.)
    """
    layer = {"core": 0, "nn": 1, "train": 2}
    found = ROOT.glob("packages/*/pyproject.toml")
    ordered = sorted(found, key=lambda p: (layer.get(p.parent.name, 3), p.parent.name))
    projects = ordered + [ROOT / "apps" / "pyproject.toml"]
    args: list[str] = []
    for pyproject in projects:
        if not pyproject.exists():
            continue
        meta = tomllib.loads(pyproject.read_text())["project"]
        extras = sorted(meta.get("optional-dependencies", {}))
        rel = pyproject.parent.relative_to(ROOT)
        spec = f"{rel}[{','.join(extras)}]" if extras else str(rel)
        args += ["-e", spec]
    return args


if __name__ == "__main__":
    sys.stdout.write(" ".join(editable_specs()) + "\n")
