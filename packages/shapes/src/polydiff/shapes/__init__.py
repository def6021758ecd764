"""polydiff.shapes: 3-D shapes (point clouds, SDF grids, wavelet SDFs) over the shared core.

Modules: ``data`` (procedural classes, mesh / point-cloud folders), ``models`` (set transformer
and 3-D U-Net factories of named sizes), ``experiments`` (dataset factories and
:class:`~polydiff.shapes.experiments.ShapesHooks`), ``metrics`` (PVD / PointFlow protocol),
``pipeline`` (generation, completion, interpolation through ``polydiff.core``), ``io`` (PLY / OBJ /
GLB / NPZ export, marching cubes, renders without OpenGL), ``demo``.
"""
