"""Meshing and export: marching cubes, point clouds -> meshes, PLY / OBJ / GLB / NPZ, renders.

- :func:`sdf_to_mesh`: marching cubes (Lorensen & Cline 1987, scikit-image) on a grid of
  :func:`polydiff.shapes.data.grid_coordinates` at level 0 (SDF) or 0.5 (occupancy); the grid
  border is padded with "outside" so every surface is closed, and ``mesh.is_watertight`` is
  what :func:`watertight_ratio` counts.
- :func:`points_to_mesh`: the documented point -> mesh method: the union of balls of radius
  ``radius`` around the points, rasterised on a grid, interior filled
  (``scipy.ndimage.binary_fill_holes``), then marching cubes. The surface lies about ``radius``
  outside the sampled one; it is closed by construction (watertight unless it touches the grid).
- :func:`render_views`: multi-view PNG of points or a mesh with matplotlib (Agg, no OpenGL).

Every file is written atomically (``polydiff.core.fileio.atomic_path``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage import measure

from polydiff.core.fileio import atomic_path

from .data import GRID_BOUND, grid_coordinates

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = [
    "export_mesh",
    "export_points",
    "points_to_mesh",
    "render_views",
    "sdf_to_mesh",
]

VIEWS = ((20, -60), (20, 30), (70, -90))  # (elevation, azimuth) in degrees


def sdf_to_mesh(grid: np.ndarray, level: float = 0.0, bound: float = GRID_BOUND) -> trimesh.Trimesh:
    """Mesh of ``{grid < level}`` (SDF, negative inside) by marching cubes; for an occupancy grid
    pass ``-occupancy`` and ``level=-0.5``. Empty or full grids give an empty mesh."""
    grid = np.asarray(grid, dtype=np.float32)
    if grid.ndim != 3 or len(set(grid.shape)) != 1:
        raise ValueError(f"sdf_to_mesh: expected a cubic (R, R, R) grid, got {grid.shape}")
    r = grid.shape[0]
    outside = max(float(grid.max()), level + 1e-3)
    padded = np.pad(grid, 1, constant_values=outside)  # closes surfaces cut by the border
    if not (padded.min() < level < padded.max()):
        return trimesh.Trimesh()
    spacing = 2 * bound / (r - 1)
    verts, faces, _, _ = measure.marching_cubes(padded, level=level, spacing=(spacing,) * 3)
    verts = verts - bound - spacing  # undo the padding offset
    # skimage orients faces for increasing values outward; ours increase outward too
    mesh = trimesh.Trimesh(verts, faces[:, ::-1], process=True)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def points_to_mesh(
    points: np.ndarray, resolution: int = 48, radius: float | None = None
) -> trimesh.Trimesh:
    """Mesh around a point cloud (P, 3) in data space: ball union on a grid, filled, meshed.

    ``radius`` defaults to 1.5 grid cells. See the module docstring for the method."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points_to_mesh: expected (P, 3), got {points.shape}")
    spacing = 2 * GRID_BOUND / (resolution - 1)
    radius = radius or 1.5 * spacing
    coords = grid_coordinates(resolution).reshape(-1, 3)
    dist, _ = cKDTree(points).query(coords)
    occ = (dist < radius).reshape((resolution,) * 3)
    occ = ndimage.binary_fill_holes(occ)
    return sdf_to_mesh(np.where(occ, -1.0, 1.0), level=0.0)


def _atomic_export(obj: trimesh.Trimesh | trimesh.PointCloud, path: Path) -> Path:
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext not in ("ply", "obj", "glb", "stl", "off"):
        raise ValueError(
            f"unsupported export format {path.suffix!r} for {path}; use ply|obj|glb|stl|off"
        )
    data = obj.export(file_type=ext)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def export_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write a mesh as PLY / OBJ / GLB / STL / OFF (by extension), atomically."""
    return _atomic_export(mesh, Path(path))


def export_points(points: np.ndarray, path: str | Path) -> Path:
    """Write a point cloud (P, 3) as PLY (vertices only) or NPZ (``points``), atomically."""
    path = Path(path)
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"export_points: expected (P, 3), got {points.shape}")
    if path.suffix.lower() == ".npz":
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, points=points)
        return path
    return _atomic_export(trimesh.PointCloud(points), path)


def render_views(
    shapes: Sequence[np.ndarray | trimesh.Trimesh],
    path: str | Path,
    titles: Sequence[str] | None = None,
    views: Sequence[tuple[float, float]] = VIEWS,
    size: float = 2.2,
) -> Path:
    """One PNG: a row per shape, a column per view; points as a 3-D scatter coloured by height,
    meshes as a shaded trisurf (matplotlib, no OpenGL). Shapes are in data space (y up)."""
    rows = max(len(shapes), 1)
    fig = plt.figure(figsize=(size * len(views), size * rows), dpi=80)
    lim = 0.5
    for r, shape in enumerate(shapes):
        for c, (elev, azim) in enumerate(views):
            ax = fig.add_subplot(rows, len(views), r * len(views) + c + 1, projection="3d")
            if isinstance(shape, trimesh.Trimesh):
                if len(shape.faces):
                    v = shape.vertices
                    # plot with y (up) as matplotlib's z axis
                    ax.plot_trisurf(v[:, 0], v[:, 2], shape.faces, v[:, 1], color="tab:blue",
                                    linewidth=0, antialiased=False, shade=True)  # fmt: skip
            else:
                p = np.asarray(shape)
                ax.scatter(
                    p[:, 0], p[:, 2], p[:, 1], s=1.0, c=p[:, 1], cmap="viridis", depthshade=False
                )
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_zlim(-lim, lim)
            ax.view_init(elev=elev, azim=azim)
            ax.set_axis_off()
            if titles is not None and c == 0:
                ax.set_title(str(titles[r]), fontsize=7)
    fig.subplots_adjust(0, 0, 1, 0.97, 0, 0.05)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
