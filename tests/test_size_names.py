"""Size names mean one network each across the project (issue 13).

Every ``*_SIZES`` table defined in ``packages/`` is found by a source scan and imported. A name
that appears in two tables must denote the same layout object (a table that picks from
``polydiff.nn.UNET_SIZES`` or ``DIT_SIZES`` shares its entries, it does not copy them). The
U-Net family (``polydiff.nn.UNet`` builders: nn, image, audio, RL) is checked strictly; the
tables that still reuse the generic ``tiny`` / ``small`` / ``base`` for their own networks are
named in :data:`NOT_YET_UNIQUE`, a list that may only shrink (the test fails when a new table
joins a collision and when a listed one is resolved). Runs saved under the audio U-Net's old
names are migrated when opened (config version 3).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from polydiff.audio.models import AUDIO_UNET_SIZES, audio_unet
from polydiff.train.run import (
    CONFIG_VERSION,
    RENAMED_SIZES_V3,
    RENAMED_SIZES_V4,
    migrate_run_config,
)

ROOT = Path(__file__).resolve().parents[1]
TABLE = re.compile(r"^([A-Z][A-Z0-9_]*_SIZES)\s*(?::[^=\n]+)?=", re.M)

# polydiff.nn.UNet builders: one name, one network
UNET_FAMILY = {
    "polydiff.nn.unet.UNET_SIZES",
    "polydiff.image.models.IMAGE_UNET_SIZES",
    "polydiff.audio.models.AUDIO_UNET_SIZES",
    "polydiff.rl.models.RL_UNET_SIZES",
}
# tables whose generic names (tiny / small / base) still mean their own networks; their owners
# rename them (as audio's U-Net did: "audio-tiny", ...). May only shrink.
NOT_YET_UNIQUE = {
    "polydiff.audio.gan.DISCRIMINATOR_SIZES",
    "polydiff.audio.models.DIFFWAVE_SIZES",
    "polydiff.audio.models.VOCODER_SIZES",
    "polydiff.image.models.IMAGE_DIT_SIZES",
    "polydiff.motion.models.MOTION_SIZES",
    "polydiff.video.models.VIDEO_UNET_SIZES",
    # the shared table whose tiny / small the others collide with
    "polydiff.nn.unet.UNET_SIZES",
    "polydiff.image.models.IMAGE_UNET_SIZES",
}


def size_tables() -> dict[str, dict[str, Any]]:
    """``module.NAME`` -> table for every ``*_SIZES`` dict defined at top level in packages/."""
    tables = {}
    for path in sorted(ROOT.glob("packages/*/src/polydiff/**/*.py")):
        names = TABLE.findall(path.read_text())
        if not names:
            continue
        src = next(p for p in path.parents if p.name == "src")
        module = importlib.import_module(".".join(path.relative_to(src).with_suffix("").parts))
        for name in names:
            table = getattr(module, name)
            if isinstance(table, dict) and all(isinstance(k, str) for k in table):
                tables[f"{module.__name__}.{name}"] = table
    return tables


def collisions(tables: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Names used by two or more tables for different layouts: name -> the tables."""
    seen: dict[str, dict[int, list[str]]] = {}
    for table_name, table in tables.items():
        for name, layout in table.items():
            seen.setdefault(name, {}).setdefault(id(layout), []).append(table_name)
    return {
        name: sorted(t for group in by_layout.values() for t in group)
        for name, by_layout in seen.items()
        if len(by_layout) > 1
    }


def test_the_collision_check_flags_copies_and_accepts_shared_entries() -> None:
    shared = {"model_channels": 16}
    assert collisions({"a": {"tiny": shared}, "b": {"tiny": shared}}) == {}
    assert collisions({"a": {"tiny": shared}, "b": {"tiny": dict(shared)}}) == {"tiny": ["a", "b"]}


def test_every_size_table_is_found() -> None:
    tables = size_tables()
    assert set(tables) >= UNET_FAMILY | NOT_YET_UNIQUE
    assert "polydiff.rl.models.RL_TRANSFORMER_SIZES" in tables


def test_unet_size_names_mean_one_network() -> None:
    tables = size_tables()
    family = collisions({k: v for k, v in tables.items() if k in UNET_FAMILY})
    assert family == {}, f"U-Net size names with two meanings: {family}"
    assert all(name.startswith("audio-") for name in AUDIO_UNET_SIZES)


def test_size_names_across_packages_only_shrink_in_collisions() -> None:
    found = collisions(size_tables())
    involved = {t for names in found.values() for t in names}
    assert not involved & UNET_FAMILY - NOT_YET_UNIQUE, found
    new = involved - NOT_YET_UNIQUE
    assert not new, f"new size tables reuse a name for another network: {sorted(new)} ({found})"
    resolved = NOT_YET_UNIQUE - involved
    assert not resolved, f"resolved, remove from NOT_YET_UNIQUE: {sorted(resolved)}"


@pytest.mark.parametrize("old", ["tiny", "small", "base", "latent"])
def test_audio_runs_saved_with_the_old_unet_names_are_migrated(old: str, capsys) -> None:
    saved = OmegaConf.create(
        {
            "config_version": 2,
            "model": {"_target_": "polydiff.audio.models.audio_unet", "size": old},
        }
    )
    migrate_run_config(saved, "old_run")
    new = RENAMED_SIZES_V3["polydiff.audio.models.audio_unet"][old]
    assert saved.model.size == new == f"audio-{old}" and saved.config_version == CONFIG_VERSION
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"'{old}' is now called '{new}'" in err[0] and "old_run" in err[0]
    with pytest.raises(KeyError, match=f"unknown audio U-Net size '{old}'"):
        audio_unet(old)
    audio_unet(new, n_mels=16, frames=16)  # the migrated name builds


@pytest.mark.parametrize("target", ["point_transformer", "voxel_unet"])
@pytest.mark.parametrize("old", ["tiny", "small", "base"])
def test_shapes_runs_saved_with_the_bare_names_are_migrated(target: str, old: str, capsys) -> None:
    from polydiff.shapes import models

    full = f"polydiff.shapes.models.{target}"
    saved = OmegaConf.create({"config_version": 3, "model": {"_target_": full, "size": old}})
    migrate_run_config(saved, "old_shapes_run")
    new = RENAMED_SIZES_V4[full][old]
    assert saved.model.size == new and saved.config_version == CONFIG_VERSION
    assert new.startswith("points-" if target == "point_transformer" else "voxel-")
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    table = models.POINT_SIZES if target == "point_transformer" else models.VOXEL_SIZES
    assert new in table and old not in table


def test_version_1_image_runs_and_other_models_keep_their_names(capsys) -> None:
    image = OmegaConf.create(
        {"model": {"_target_": "polydiff.image.models.image_unet", "size": "tiny"}}
    )
    migrate_run_config(image, "v1_run")  # version 1 -> 2 -> 3: the image rename only
    assert image.model.size == "tiny-c16" and image.config_version == CONFIG_VERSION
    vocoder = OmegaConf.create(
        {
            "config_version": 2,
            "model": {"_target_": "polydiff.audio.models.vocos_vocoder", "size": "tiny"},
        }
    )
    capsys.readouterr()
    migrate_run_config(vocoder, "voc_run")
    assert vocoder.model.size == "tiny" and capsys.readouterr().err == ""
