"""The layering contract of DESIGN.md, checked on the source tree (AST, no imports executed).

- ``polydiff.core`` imports only the standard library, torch and numpy;
- ``nn`` may import ``core``; ``train`` may import ``core`` and ``nn``;
- any other folder under ``packages/`` is a modality: it may import core, nn and train,
  never another modality;
- nothing under ``packages/`` imports the entry-point layers (``polydiff_apps``, ``benchmarks``).

The rules live in ``[tool.polydiff.layering]`` of the root pyproject.toml, so a new modality
folder is covered without any wiring.
"""

from __future__ import annotations

import ast
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Violation:
    file: Path
    line: int
    package: str
    imported: str
    rule: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: polydiff.{self.package} imports {self.imported} ({self.rule})"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Absolute module names imported by a file (relative imports stay in-package: skipped)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "polydiff":  # `from polydiff import core`
                found += [(node.lineno, f"polydiff.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def check_layering(root: Path, rules: dict) -> list[Violation]:
    """Return every import under ``root/packages`` that breaks ``rules``."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    layered = {name for name in rules if name not in {"modality", "core_third_party", "forbidden"}}
    violations: list[Violation] = []
    for pkg_dir in sorted((root / "packages").glob("*/src/polydiff/*")):
        if not pkg_dir.is_dir():
            continue
        package = pkg_dir.name
        allowed = set(rules[package] if package in layered else rules["modality"]) | {package}
        for file in sorted(pkg_dir.rglob("*.py")):
            for line, module in _imports(file):
                top = module.split(".")[0]
                if top in rules["forbidden"]:
                    violations.append(Violation(file, line, package, module, "entry-point layer"))
                elif top == "polydiff":
                    parts = module.split(".")
                    target = parts[1] if len(parts) > 1 else "<namespace>"
                    if target not in allowed:
                        rule = "modalities never import each other"
                        if target in layered or package in layered:
                            rule = "imports only point down"
                        violations.append(Violation(file, line, package, module, rule))
                elif package == "core" and top not in stdlib | set(rules["core_third_party"]):
                    rule = "core depends on torch and numpy only"
                    violations.append(Violation(file, line, package, module, rule))
    return violations


def _rules() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["polydiff"]["layering"]


def test_tree_respects_layering() -> None:
    violations = check_layering(ROOT, _rules())
    assert not violations, "layering violations:\n" + "\n".join(map(str, violations))


def test_every_package_is_checked() -> None:
    checked = {p.name for p in (ROOT / "packages").glob("*/src/polydiff/*") if p.is_dir()}
    assert {"core", "nn", "train"} <= checked


def _plant(root: Path, package: str, source: str) -> None:
    path = root / "packages" / package / "src" / "polydiff" / package / "planted.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))


def test_planted_violations_are_caught(tmp_path: Path) -> None:
    _plant(tmp_path, "core", "import scipy\nfrom polydiff.nn import unet\nimport torch\n")
    _plant(tmp_path, "nn", "from polydiff.train import Trainer\nimport polydiff.core\n")
    _plant(tmp_path, "image", "from polydiff import rl\nfrom polydiff.core import toy\n")
    _plant(tmp_path, "rl", "def f():\n    import polydiff_apps.cli\n    import benchmarks.run\n")
    found = {(v.package, v.imported) for v in check_layering(tmp_path, _rules())}
    assert found == {
        ("core", "scipy"),
        ("core", "polydiff.nn"),
        ("nn", "polydiff.train"),
        ("image", "polydiff.rl"),
        ("rl", "polydiff_apps.cli"),
        ("rl", "benchmarks.run"),
    }


def test_clean_tree_passes(tmp_path: Path) -> None:
    _plant(tmp_path, "core", "import math\nimport numpy as np\nfrom torch import nn\n")
    _plant(tmp_path, "image", "import PIL\nfrom polydiff.train import x\nfrom . import y\n")
    assert check_layering(tmp_path, _rules()) == []
