"""HHA: a depth map encoded as three 8-bit channels (Gupta, Girshick, Arbelaez & Malik, ECCV 2014).

The paper's NYUDv2 experiments (arXiv:1411.4038, section 5, Table 4) feed depth to FCNs as HHA images:
"horizontal disparity, height above ground, and the angle of the local surface normal with the inferred
gravity direction". :func:`hha_encode` makes them from a depth map and the camera's intrinsics, following
Gupta et al.'s released code (``rcnn-depth``: ``saveHHA.m``, ``processDepthImage.m``):

1. **horizontal disparity**: ``31000 / depth_cm``, depth clamped to at least 100 cm (so 255 at 1.22 m and
   nearer, 103 at 3 m);
2. **height above the lowest point**, in cm: ``-p . g`` for each 3-D point ``p`` and the gravity direction
   ``g``, minus its minimum over the image; when the lowest point lies less than 90 cm below the camera the
   floor is assumed 130 cm below it instead (Gupta's rule for views that miss the floor);
3. **angle** between the surface normal and gravity, in degrees, plus 38 (``128 - 90``: a vertical surface
   is 128, a floor 38, a ceiling 218).

Values are rounded and saturate at 0 and 255, as MATLAB's ``uint8`` does.

What is implemented, and how it is simplified:

* camera coordinates as Gupta's: X right, Y down, Z forward; pixel ``(u, v)`` at depth ``Z`` is
  ``((u - cx) Z / fx, (v - cy) Z / fy, Z)`` with 0-based pixel coordinates;
* surface normals by least-squares plane fits (the smallest principal axis of the points) in a square
  window of side ``2 r + 1`` over the measured pixels, oriented away from the camera (``n . p > 0``), as
  Gupta's ``computeNormalsSquareSupport`` orients them. Gupta fits planes in 1/Z form and can stop windows
  at superpixel borders; here windows are plain squares;
* gravity (:func:`estimate_gravity`) by Gupta's iteration (CVPR 2013, section 3.1): start from the camera's
  down axis; keep the normals within ``t`` degrees of parallel and of perpendicular to the current estimate;
  the new estimate minimises ``sum(cos^2)`` over the perpendicular set minus ``sum(cos^2)`` over the parallel
  set: the eigenvector of ``N_perp' N_perp - N_par' N_par`` with the smallest eigenvalue. Thresholds 45 then
  15 degrees, 5 iterations each; normals from windows of radius 10 for gravity and 3 for the angle channel.

Normals point away from the camera, and gravity down, so a floor's angle is 0 degrees and a wall's 90.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import ConfigError, DataError, OutputError

__all__ = ["Camera", "NYUD_CAMERA", "HHA", "point_cloud", "surface_normals", "estimate_gravity", "compute_hha",
           "hha_encode", "encode_depth_files"]


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics in pixels, 0-based pixel coordinates (pixel ``(0, 0)``'s centre is at 0, 0)."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_matrix(cls, k: Sequence[Sequence[float]] | np.ndarray) -> Camera:
        """From a 3x3 calibration matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``."""
        m = np.asarray(k, dtype=np.float64)
        if m.shape != (3, 3):
            raise ConfigError(f"camera matrix must be 3x3, not {m.shape}",
                              fix="give the calibration matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
        return cls(fx=float(m[0, 0]), fy=float(m[1, 1]), cx=float(m[0, 2]), cy=float(m[1, 2]))


# The NYUDv2 Kinect's colour camera (NYU toolbox ``camera_params.m``, the values Gupta's HHA code uses); Gupta
# indexes pixels from 1, so the principal point is shifted by one pixel for 0-based coordinates.
NYUD_CAMERA = Camera(fx=518.857901, fy=519.469611, cx=325.582449 - 1, cy=253.736166 - 1)

_DOWN = (0.0, 1.0, 0.0)  # the camera's own down axis (image rows grow downwards): the first gravity guess


@dataclass(frozen=True)
class HHA:
    """The three HHA quantities before quantisation, (H, W) float64 each, NaN where undefined.

    Attributes:
        disparity: ``31000 / max(depth_cm, 100)``.
        height: height above the lowest point (or the assumed floor), cm.
        angle: angle between the surface normal and gravity, degrees (0 floor, 90 wall, 180 ceiling).
        gravity: the inferred gravity direction, a unit vector in camera coordinates (X right, Y down).
    """

    disparity: np.ndarray
    height: np.ndarray
    angle: np.ndarray
    gravity: np.ndarray

    def to_uint8(self) -> np.ndarray:
        """(H, W, 3) uint8 image: disparity, height, angle + 38; rounded, saturated, NaN as 0."""
        channels = np.stack([self.disparity, self.height, self.angle + 38.0], axis=-1)
        channels = np.nan_to_num(channels, nan=0.0)
        return np.clip(np.floor(channels + 0.5), 0, 255).astype(np.uint8)


def point_cloud(depth_m: np.ndarray, camera: Camera) -> np.ndarray:
    """(H, W, 3) camera coordinates in metres (X right, Y down, Z forward) of a depth map (H, W) in metres."""
    z = np.asarray(depth_m, dtype=np.float64)
    v, u = np.mgrid[0 : z.shape[0], 0 : z.shape[1]].astype(np.float64)
    return np.stack([(u - camera.cx) * z / camera.fx, (v - camera.cy) * z / camera.fy, z], axis=-1)


def surface_normals(points: np.ndarray, valid: np.ndarray, radius: int) -> np.ndarray:
    """Unit normals (H, W, 3) of planes fitted to the valid points in each ``2 radius + 1`` square window.

    The normal is the direction of least spread of the window's points (a total least-squares plane fit),
    oriented away from the camera (``n . p > 0``, Gupta's convention). Windows with fewer than 3 valid
    points give NaN.
    """
    size = 2 * radius + 1
    w = valid.astype(np.float64)
    p = np.where(valid[..., None], points, 0.0)

    def window_sum(a: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(a, size=size, mode="constant", cval=0.0) * size * size

    count = window_sum(w)  # (H, W)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.stack([window_sum(p[..., i]) for i in range(3)], axis=-1) / count[..., None]  # (H, W, 3)
        cov = np.empty(points.shape[:2] + (3, 3))
        for i in range(3):
            for j in range(i, 3):
                c = window_sum(p[..., i] * p[..., j]) / count - mean[..., i] * mean[..., j]
                cov[..., i, j] = cov[..., j, i] = c
    enough = count >= 2.5  # at least 3 points (the filter's sums carry rounding error)
    normals = np.full(points.shape, np.nan)
    _, vecs = np.linalg.eigh(cov[enough])  # eigenvalues ascending: column 0 spans the least spread
    n = vecs[..., 0]
    sign = np.sign(np.einsum("ij,ij->i", n, points[enough]))
    normals[enough] = n * np.where(sign == 0, 1.0, sign)[:, None]
    return normals


def estimate_gravity(normals: np.ndarray, *, start: Sequence[float] = _DOWN,
                     thresholds: Sequence[float] = (45.0, 15.0), iterations: Sequence[int] = (5, 5)) -> np.ndarray:
    """Gravity direction (3,) from surface normals (..., 3), by Gupta et al.'s iteration (CVPR 2013, sec. 3.1).

    At each step, normals within ``t`` degrees of parallel to the estimate (floors, ceilings, table tops) and
    within ``t`` degrees of perpendicular to it (walls) are collected; the new estimate is the unit vector
    most aligned with the first set and most orthogonal to the second: the eigenvector of
    ``N_perp' N_perp - N_par' N_par`` with the smallest eigenvalue, signed to agree with the previous one.
    ``thresholds[k]`` is used for ``iterations[k]`` steps. NaN normals are ignored; with no normal in either
    set the estimate stays where it is.
    """
    n = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    n = n[np.isfinite(n).all(axis=1)]
    g = np.asarray(start, dtype=np.float64)
    g = g / np.linalg.norm(g)
    for t, steps in zip(thresholds, iterations, strict=True):
        cos_t, sin_t = np.cos(np.radians(t)), np.sin(np.radians(t))
        for _ in range(steps):
            c = np.abs(n @ g)
            par, perp = n[c > cos_t], n[c < sin_t]
            if len(par) + len(perp) == 0:
                break
            _, vecs = np.linalg.eigh(perp.T @ perp - par.T @ par)
            new = vecs[:, 0]
            g = new * (1.0 if new @ g >= 0 else -1.0)
    return g


def compute_hha(depth_m: np.ndarray, camera: Camera, *, missing: np.ndarray | None = None,
                normal_radius: int = 3, gravity_radius: int = 10) -> HHA:
    """The HHA quantities (unquantised) of a depth map (H, W) in metres; see the module docstring.

    Args:
        depth_m: depth along the optical axis, metres; 0, negative or non-finite means no depth (all three
            quantities NaN there).
        camera: the depth map's intrinsics.
        missing: pixels whose depth was filled in rather than measured (Gupta passes the raw Kinect depth's
            zeros): they get HHA values but do not take part in normal fitting. Default: no such pixels.
        normal_radius: window radius of the normals that give the angle channel (Gupta: 3).
        gravity_radius: window radius of the normals that give gravity (Gupta: 10).
    """
    depth = np.asarray(depth_m, dtype=np.float64)
    if depth.ndim != 2:
        raise DataError(f"depth map must be (H, W), not {depth.shape}", fix="give one depth value a pixel")
    has_depth = np.isfinite(depth) & (depth > 0)
    if not has_depth.any():
        raise DataError("depth map has no positive depth values", fix="give a depth map with measured depths")
    depth = np.where(has_depth, depth, 0.0)
    measured = has_depth if missing is None else has_depth & ~np.asarray(missing, dtype=bool)
    points = point_cloud(depth, camera)
    gravity = estimate_gravity(surface_normals(points, measured, gravity_radius)[measured])
    normals = surface_normals(points, measured, normal_radius)
    angle = np.degrees(np.arccos(np.clip(normals @ gravity, -1.0, 1.0)))  # NaN where no normal
    height = -(points @ gravity) * 100.0  # cm above the camera, along -gravity
    lowest = float(height[has_depth].min())
    if lowest > -90.0:  # the floor is not in view: Gupta assumes it 130 cm below the camera
        lowest = -130.0
    height = height - lowest
    disparity = 31000.0 / np.maximum(depth * 100.0, 100.0)
    undefined = ~has_depth
    for a in (angle, height, disparity):
        a[undefined] = np.nan
    return HHA(disparity=disparity, height=height, angle=angle, gravity=gravity)


def hha_encode(depth_m: np.ndarray, camera: Camera, *, missing: np.ndarray | None = None,
               normal_radius: int = 3, gravity_radius: int = 10) -> np.ndarray:
    """The HHA image (H, W, 3) uint8 of a depth map (H, W) in metres (Gupta et al., ECCV 2014).

    Channel 0: horizontal disparity ``31000 / max(depth_cm, 100)``; 1: height above the lowest point, cm;
    2: angle between surface normal and inferred gravity, degrees, + 38. Pixels without depth are 0.
    Arguments as :func:`compute_hha`.
    """
    return compute_hha(depth_m, camera, missing=missing, normal_radius=normal_radius,
                       gravity_radius=gravity_radius).to_uint8()


def encode_depth_files(paths: Sequence[str | Path], out_dir: str | Path, camera: Camera = NYUD_CAMERA, *,
                       depth_scale: float = 1000.0, overwrite: bool = False) -> list[Path]:
    """Write ``<out_dir>/<name>.png``, the HHA image of each depth PNG in ``paths`` (``fcnseg hha``).

    Depth files are read by :func:`fcnseg.io.read_depth` (16-bit PNGs; ``depth_scale`` units a metre, 1000 for
    millimetres as NYUDv2 stores them). Existing outputs are refused unless ``overwrite``, before any work.
    """
    from PIL import Image

    from .io import read_depth
    from .outputs import atomic_write, check_output_dir

    out = check_output_dir(out_dir, overwrite=True)  # writable; existing files are checked one by one below
    targets = [out / f"{Path(p).stem}.png" for p in paths]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]} exists ({len(existing)} outputs do)", path=existing[0],
                          fix="pass {overwrite} or choose another {out_dir}")
    for src, dst in zip(paths, targets, strict=True):
        try:
            hha = hha_encode(read_depth(src) / depth_scale, camera)
        except DataError as e:
            if e.path is not None:
                raise
            raise DataError(f"{src}: {e.what}", fix=e.fix, path=src) from e  # name the file
        image = Image.fromarray(hha)
        atomic_write(dst, lambda f, im=image: im.save(f, format="PNG"), fsync=False)
    return targets
