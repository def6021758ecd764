"""One recipe path: every recipe is a config run through ``polydiff.train.run`` (issue 13).

- No package, app or benchmark constructs a ``TrainerConfig`` itself: only ``polydiff.train``
  does (``polydiff.train.run.build_trainer_config`` from a config's ``trainer`` node), so every
  number comes from ``polydiff train experiment=...`` (AST scan, aliases and attributes too).
- ``tests/`` and ``benchmarks/`` never import each other (tests check packages; benchmarks are
  entry points), including by file path (``importlib.util.spec_from_file_location``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PACKAGE = ROOT / "packages/train/src/polydiff/train"


def _python_files(*roots: str) -> Iterator[Path]:
    for root in roots:
        for path in sorted((ROOT / root).rglob("*.py")):
            if not any(part in (".venv", "build", "__pycache__") for part in path.parts):
                yield path


def trainer_config_calls(source: str) -> list[int]:
    """Lines where ``TrainerConfig(...)`` is called (directly, through a module attribute, or
    under an ``import ... as`` alias)."""
    tree = ast.parse(source)
    names = {"TrainerConfig"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname for a in node.names if a.name == "TrainerConfig" and a.asname}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if called in names:
            lines.append(node.lineno)
    return lines


def imports_of(source: str) -> set[str]:
    """Top-level module names imported (``import a.b`` / ``from a.b import c`` -> ``a``), plus
    ``benchmarks`` / ``tests`` when a path under them is loaded as a module by file name."""
    tree = ast.parse(source)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("spec_from_file_location", "import_module", "run_path"):
                text = ast.unparse(node)
                out |= {d for d in ("benchmarks", "tests") if f"{d}/" in text or f"'{d}." in text}
    return out


def test_scanners_find_what_they_look_for() -> None:
    src = (
        "from polydiff.train import TrainerConfig as TC\nimport polydiff.train as t\n"
        "a = TC(max_steps=1)\nb = t.TrainerConfig()\nc = build_trainer_config({})\n"
    )
    assert trainer_config_calls(src) == [3, 4]
    assert imports_of("from benchmarks.image.run import markdown") == {"benchmarks"}
    loader = "importlib.util.spec_from_file_location('x', ROOT / 'benchmarks/rl/run.py')"
    assert "benchmarks" in imports_of(loader)
    assert imports_of("import tests.rl.test_planning as t") == {"tests"}


def test_no_trainer_config_built_outside_polydiff_train() -> None:
    offenders: dict[str, list[int]] = {}
    for path in _python_files("packages", "apps", "benchmarks"):
        if path.is_relative_to(TRAIN_PACKAGE):
            continue
        lines = trainer_config_calls(path.read_text())
        if lines:
            offenders[str(path.relative_to(ROOT))] = lines
    assert not offenders, (
        "TrainerConfig built outside polydiff.train (make it a config under configs/ and train "
        f"it with polydiff.train.run.train; in-process fine-tuning: polydiff.train.fit_parameters)"
        f": {offenders}"
    )


def test_tests_and_benchmarks_do_not_import_each_other() -> None:
    bad = [
        str(p.relative_to(ROOT))
        for p in _python_files("tests")
        if "benchmarks" in imports_of(p.read_text())
    ]
    bad += [
        str(p.relative_to(ROOT))
        for p in _python_files("benchmarks")
        if "tests" in imports_of(p.read_text())
    ]
    assert not bad, f"tests/ and benchmarks/ import each other in {bad}"
