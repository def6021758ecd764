"""Built-in shapes, loaders for every format (round trips, broken files), meshing and export."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from polydiff.shapes import data, io


@pytest.fixture(scope="module")
def small_set() -> data.ShapeSet:
    return data.procedural_shapes(per_class=4, split="test", resolution=24)


def test_procedural_set_shapes_seeded_and_in_unit_ball(small_set):
    s = small_set
    assert s.points.shape == (5, 2048, 3) and s.sdf.shape == (5, 24, 24, 24)
    assert s.labels.tolist() == [0, 1, 2, 3, 4]
    assert np.linalg.norm(s.points, axis=-1).max() <= 0.5 + 1e-5
    again = data.make_shape("chair", 7).parts
    assert again == data.make_shape("chair", 7).parts and again != data.make_shape("chair", 8).parts
    # surface points lie on the union's surface (|sdf| ~ 0, never deep inside another part)
    spec = data.make_shape("mug", 3)
    pts = data.sample_surface_points(spec, 512, 0)
    assert np.abs(spec.sdf(pts)).max() < 2e-3
    # the SDF grid is negative inside: occupancy fraction is a plausible solid fraction
    assert 0.001 < (s.sdf < 0).mean() < 0.3 and s.sdf.min() >= -1 and s.sdf.max() <= 1


def test_primitive_sdf_matches_mesh_distance():
    """The analytic SDF agrees with trimesh's closest-point distance on the part's own mesh."""
    rng = np.random.default_rng(0)
    for prim in (
        data.Primitive("box", (0.1, 0, 0), (0.2, 0.1, 0.3)),
        data.Primitive("cylinder", (0, 0.1, 0), (0.2, 0.15), axis=0),
        data.Primitive("torus", (0, 0, 0.1), (0.2, 0.05), axis=2),
        data.Primitive("sphere", (0, 0, 0), (0.3,)),
    ):
        p = rng.uniform(-0.5, 0.5, (200, 3))
        mesh = prim.mesh()
        _, dist, _ = trimesh.proximity.closest_point_naive(mesh, p)
        # tessellated cylinders / tori / spheres differ by the chord error (< 1 cm here)
        np.testing.assert_allclose(np.abs(prim.sdf(p)), dist, atol=0.012)


def test_normalisation_modes():
    pts = np.random.default_rng(0).normal(size=(4, 100, 3)).astype(np.float32) * 3 + 1
    g, (m, sd) = data.normalize_points(pts, "global")
    # PointFlow: per-axis mean, one std over every coordinate of the raw set
    np.testing.assert_allclose(g.reshape(-1, 3).mean(0), 0, atol=1e-5)
    assert abs(sd - pts.reshape(-1).std()) < 1e-5
    np.testing.assert_allclose(g, (pts - pts.reshape(-1, 3).mean(0)) / pts.std(), atol=1e-5)
    g2, _ = data.normalize_points(pts[:2], "global", (m, sd))
    np.testing.assert_allclose(g2, g[:2], atol=1e-6)
    p, _ = data.normalize_points(pts, "per_shape")
    np.testing.assert_allclose(p.mean(1), 0, atol=1e-5)
    want = (pts - pts.mean(1, keepdims=True)) / pts.reshape(4, -1).std(1)[:, None, None]
    np.testing.assert_allclose(p, want, atol=1e-5)
    with pytest.raises(ValueError, match="normalize must be"):
        data.normalize_points(pts, "unit")


def _write_all_formats(root, mesh):
    cloud = mesh.sample(300)
    paths = {}
    for ext in ("obj", "ply", "off", "stl", "glb"):
        paths[ext] = io.export_mesh(mesh, root / f"mesh.{ext}")
    paths["ply_points"] = io.export_points(cloud, root / "cloud.ply")
    np.save(root / "cloud.npy", cloud.astype(np.float32))
    paths["npy"] = root / "cloud.npy"
    paths["npz"] = io.export_points(cloud, root / "cloud.npz")
    return paths, cloud


def test_every_format_round_trips(tmp_path):
    mesh = trimesh.creation.box(extents=(0.6, 0.4, 0.2))
    paths, cloud = _write_all_formats(tmp_path, mesh)
    for name, path in paths.items():
        pts = data.load_points(path, 256, seed=0)
        assert pts.shape == (256, 3), name
        # every point lies on the box surface: the distance to it is ~0
        _, dist, _ = trimesh.proximity.closest_point_naive(mesh, pts)
        assert dist.max() < 1e-4, name
        if name in ("obj", "ply", "off", "stl", "glb"):
            back = data.load_mesh(path)
            assert back.is_watertight and abs(back.volume - mesh.volume) < 1e-6, name
    full = data.load_points(paths["npy"], 300)
    np.testing.assert_allclose(np.sort(full, 0), np.sort(cloud.astype(np.float32), 0))


def test_broken_files_are_named_or_skipped_and_counted(tmp_path):
    root = tmp_path / "set"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        io.export_mesh(trimesh.creation.icosphere(radius=0.3), root / cls / "ok.obj")
    (root / "a" / "broken.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n")  # truncated
    np.save(root / "b" / "bad.npy", np.zeros((5, 2)))  # wrong shape
    (root / "b" / "pickled.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(data.ShapeFileError, match=r"broken\.off"):
        data.folder_data(root, num_points=64)
    ds = data.folder_data(root, num_points=64, on_error="skip")
    assert len(ds) == 2 and len(ds.skipped) == 3 and ds.classes == ("a", "b")
    assert any("bad.npy" in s and "(P, 3)" in s for s in ds.skipped)
    # a mesh with a hole cannot give an SDF grid: named
    open_box = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    open_box.update_faces(np.arange(len(open_box.faces)) > 1)
    (tmp_path / "holes").mkdir()
    io.export_mesh(open_box, tmp_path / "holes" / "open.obj")
    with pytest.raises(data.ShapeFileError, match=r"open\.obj.*not watertight"):
        data.folder_data(tmp_path / "holes", num_points=64, with_sdf=True)


def test_modelnet_and_shapenet_layouts(tmp_path):
    mn = tmp_path / "ModelNet"
    for cls, prim in (
        ("bowl", trimesh.creation.icosphere(radius=0.4)),
        ("desk", trimesh.creation.box()),
    ):
        for split, k in (("train", 3), ("test", 1)):
            (mn / cls / split).mkdir(parents=True)
            for i in range(k):
                io.export_mesh(prim, mn / cls / split / f"{cls}_{i:04d}.off")
    train = data.folder_data(mn, num_points=128, split="train", with_sdf=True, resolution=16)
    test = data.folder_data(mn, num_points=128, split="test")
    assert len(train) == 6 and len(test) == 2 and train.classes == ("bowl", "desk")
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and train.sdf.shape == (6, 16, 16, 16)
    assert np.linalg.norm(train.points, axis=-1).max() <= 0.5 + 1e-5
    # the voxelised SDF of the sphere is negative at the centre and positive in the corners
    assert train.sdf[0][8, 8, 8] < 0 and train.sdf[0][0, 0, 0] > 0
    assert data.resolve_num_classes(mn, "auto", "train") == 2
    with pytest.raises(ValueError, match=r"num_classes=3.*2 class folders"):
        data.resolve_num_classes(mn, 3, "train")
    sn = tmp_path / "ShapeNetCore"
    for syn in ("03001627", "04379243"):
        d = sn / syn / "model1" / "models"
        d.mkdir(parents=True)
        io.export_mesh(trimesh.creation.box(), d / "model_normalized.obj")
    shp = data.folder_data(sn, num_points=32)
    assert shp.classes == ("03001627", "04379243") and len(shp) == 2
    with pytest.raises(FileNotFoundError, match="no shape files"):
        data.scan_folder(tmp_path / "ModelNet", split="val")


def test_meshing_is_watertight_and_exports(tmp_path, small_set):
    for grid in small_set.sdf[:2]:
        mesh = io.sdf_to_mesh(grid)
        assert mesh.is_watertight and mesh.volume > 0
    # a sphere SDF meshes to the right volume
    g = data.grid_coordinates(32)
    sphere = np.linalg.norm(g, axis=-1) - 0.4
    mesh = io.sdf_to_mesh(sphere)
    assert mesh.is_watertight and abs(mesh.volume - 4 / 3 * np.pi * 0.4**3) < 0.01
    pm = io.points_to_mesh(small_set.points[0], resolution=32)
    assert pm.is_watertight
    assert io.sdf_to_mesh(np.ones((8, 8, 8))).is_empty
    png = io.render_views([small_set.points[0], mesh], tmp_path / "views.png")
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="unsupported export format"):
        io.export_mesh(mesh, tmp_path / "x.xyz")
