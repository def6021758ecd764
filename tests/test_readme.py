"""Documentation promises kept: package READMEs open with "train on your own data" (and their
code runs), the core README's sampler recipe works when followed verbatim (contract suite,
observed order, a sampler=<name> config), and benchmarks/README.md matches benchmarks/results/.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import polydiff.core.samplers as samplers
from polydiff.core.toy import GaussianMixture

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "image", "rl")


def _section(path: Path, title: str) -> str:
    text = path.read_text()
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _code(section: str, lang: str = "python") -> str:
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_readme_starts_with_own_data(package):
    text = (ROOT / "packages" / package / "README.md").read_text()
    first = re.search(r"^## (.+)$", text, re.M).group(1)
    assert first.startswith("Train on your own"), first


def test_core_readme_training_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(_code(_section(ROOT / "packages/core/README.md", "Train on your own data")), ns)
    assert ns["x"].shape == (64, 2) and torch.isfinite(ns["x"]).all()


@pytest.mark.slow
def test_rl_readme_own_data_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(_code(_section(ROOT / "packages/rl/README.md", "Train on your own data")), ns)
    assert tuple(ns["x"].shape) == (16, 4) and len(ns["windows"]) > 0


# ---------------------------------------------------------------- the sampler recipe, verbatim
RECIPE = _code(_section(ROOT / "packages/core/README.md", "Add a sampler"))


@pytest.fixture
def registered(monkeypatch):
    """The README's sampler registered for one test (the registries restored afterwards)."""
    saved = dict(samplers.SAMPLERS), dict(samplers.EVALUATIONS)  # the same dicts are mutated:
    monkeypatch.setattr(samplers, "DETERMINISTIC", samplers.DETERMINISTIC)  # importers see them
    ns: dict = {}
    exec(RECIPE, ns)
    yield ns
    for registry, before in zip((samplers.SAMPLERS, samplers.EVALUATIONS), saved, strict=True):
        registry.clear()
        registry.update(before)


def test_recipe_sampler_is_registered_counted_and_a_config(registered):
    from polydiff.train.config import compose
    from polydiff.train.run import build_sampler

    assert samplers.SAMPLERS["midpoint"] is registered["midpoint"]
    assert "midpoint" in samplers.DETERMINISTIC
    assert samplers.denoiser_evaluations("midpoint", 5) == 9  # 2 per step, 1 into sigma 0
    spec = build_sampler(compose(["sampler=midpoint", "sampler.r=0.4"]).sampler)
    assert spec.method == "midpoint" and spec.options == {"r": 0.4}


def test_recipe_sampler_observed_order_is_two(registered):
    """The order suite's measurement (tests/core/test_samplers_order.py) on the new sampler."""
    from peers import ode_reference

    steps, s_min, s_max = [16, 32, 64], 0.05, 80.0
    g = torch.Generator().manual_seed(0)
    means = torch.randn(4, 2, generator=g, dtype=torch.float64) * 1.5
    mix = GaussianMixture(means, torch.tensor([0.3, 0.5, 0.4, 0.6]))
    x = torch.randn(8, 2, generator=g, dtype=torch.float64) * s_max
    exact = ode_reference(mix, x, s_max, s_min)
    errors = []
    for n in steps:
        grid = torch.linspace(math.log(s_max), math.log(s_min), n + 1).double().exp()
        out = samplers.sample(mix, x, grid, "midpoint")
        errors.append((out - exact).norm(dim=1).median().item())
    slope = -(math.log(errors[-1]) - math.log(errors[0])) / (math.log(steps[-1] / steps[0]))
    assert abs(slope - 2.0) < 0.35, (errors, slope)


@pytest.mark.slow
def test_recipe_sampler_passes_the_contract_suite(tmp_path):
    """The shared contract suite, collected with the README's sampler registered first."""
    plugin = tmp_path / "readme_sampler.py"
    plugin.write_text(RECIPE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "readme_sampler", "-p", "no:cacheprovider",
         "tests/core/test_samplers_contract.py", "-k", "midpoint"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    tail = proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = int(re.search(r"(\d+) passed", proc.stdout).group(1))
    assert passed >= 8 and "failed" not in proc.stdout, tail


# ---------------------------------------------------------------- benchmarks/README.md
def test_benchmarks_readme_matches_results():
    """``python -m benchmarks.run --collect`` regenerates it; this fails when it is stale."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--collect", "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
