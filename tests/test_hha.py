"""HHA encoding on synthetic scenes whose answer is known analytically: a floor and a wall seen by a pinhole
camera at a known height, level or tilted."""

from __future__ import annotations

import numpy as np
import pytest

from fcnseg.errors import DataError, OutputError
from fcnseg.hha import (
    Camera,
    compute_hha,
    encode_depth_files,
    estimate_gravity,
    hha_encode,
    point_cloud,
    surface_normals,
)

H, W, F = 240, 320, 150.0
CAMERA = Camera(fx=F, fy=F, cx=(W - 1) / 2, cy=(H - 1) / 2)


def rot_x(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def scene(cam_height: float = 1.2, wall: float = 3.0, pitch: float = 0.0, roll: float = 0.0):
    """Depth (m) of a floor ``cam_height`` below the camera and a wall ``wall`` ahead of it, the camera pitched
    down by ``pitch`` degrees and rolled by ``roll``. World axes: X right, Y down (gravity), Z ahead.

    Returns depth (H, W), a floor mask, each pixel's height above the floor (m) and gravity in camera axes.
    """
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - CAMERA.cx) / F, (v - CAMERA.cy) / F, np.ones_like(u)], axis=-1)  # camera axes, z = 1
    roll_m = np.array([[np.cos(np.radians(roll)), -np.sin(np.radians(roll)), 0],
                       [np.sin(np.radians(roll)), np.cos(np.radians(roll)), 0], [0, 0, 1]])
    r = rot_x(-pitch) @ roll_m  # camera -> world: pitched down by ``pitch``
    d = rays @ r.T  # world directions
    with np.errstate(divide="ignore"):
        t_floor = np.where(d[..., 1] > 0, cam_height / d[..., 1], np.inf)
        t_wall = np.where(d[..., 2] > 0, wall / d[..., 2], np.inf)
    t = np.minimum(t_floor, t_wall)  # camera z of the ray is 1: t is the depth
    floor = t_floor < t_wall
    height = cam_height - t * d[..., 1]
    gravity = r.T @ np.array([0.0, 1.0, 0.0])
    return t, floor, height, gravity


def interior(mask: np.ndarray, margin: int) -> np.ndarray:
    """Pixels of ``mask`` at least ``margin`` pixels from its border and the image's."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, iterations=margin)
    inner[:margin], inner[-margin:], inner[:, :margin], inner[:, -margin:] = False, False, False, False
    return inner


def angle_between(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(abs(a @ b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def test_scene_is_what_the_test_thinks():
    depth, floor, height, _ = scene()
    # Level camera: the floor shows below row cy + F * 1.2 / 3 = 179.5; the wall is 3 m away above it.
    assert floor[180:].all() and not floor[:180].any()
    np.testing.assert_allclose(depth[:180], 3.0)
    np.testing.assert_allclose(depth[239, 0], 1.2 * F / (239 - CAMERA.cy))
    np.testing.assert_allclose(height[floor], 0.0, atol=1e-12)


def test_point_cloud_and_normals_of_a_plane():
    depth, floor, _, _ = scene()
    pts = point_cloud(depth, CAMERA)
    np.testing.assert_allclose(pts[floor][:, 1], 1.2)  # the floor is the plane Y = 1.2 m
    n = surface_normals(pts, np.ones_like(floor), radius=3)
    # Oriented away from the camera: the floor's normal points down (+Y), the wall's ahead (+Z).
    np.testing.assert_allclose(n[interior(floor, 4)], [[0, 1, 0]] * interior(floor, 4).sum(), atol=1e-6)
    np.testing.assert_allclose(n[interior(~floor, 4)], [[0, 0, 1]] * interior(~floor, 4).sum(), atol=1e-6)


@pytest.mark.parametrize("pitch, roll", [(0.0, 0.0), (20.0, 0.0), (-10.0, 8.0)])
def test_gravity_is_recovered(pitch, roll):
    depth, _, _, gravity = scene(pitch=pitch, roll=roll, wall=3.5)
    hha = compute_hha(depth, CAMERA)
    assert angle_between(hha.gravity, gravity) < 0.5
    assert hha.gravity @ gravity > 0  # pointing down, not up


def test_gravity_iteration_on_given_normals():
    # 100 floor normals 12 degrees off the camera's down axis and 300 wall normals perpendicular to them.
    g = rot_x(12.0) @ np.array([0.0, 1.0, 0.0])
    walls = np.stack([rot_x(12.0) @ np.array([np.cos(a), 0.0, np.sin(a)]) for a in np.linspace(0, np.pi, 300)])
    normals = np.concatenate([np.tile(g, (100, 1)), walls, np.full((5, 3), np.nan)])
    np.testing.assert_allclose(estimate_gravity(normals), g, atol=1e-9)


@pytest.mark.parametrize("pitch, roll", [(0.0, 0.0), (25.0, 0.0), (15.0, -10.0)])
def test_hha_channels_match_the_analytic_scene(pitch, roll):
    cam_height = 1.2
    depth, floor, height, _ = scene(cam_height=cam_height, pitch=pitch, roll=roll, wall=3.5)
    hha = compute_hha(depth, CAMERA)
    # Disparity: 31000 / depth in cm, depth clamped at 1 m.
    np.testing.assert_allclose(hha.disparity, 31000 / np.maximum(depth * 100, 100), rtol=1e-12)
    # Height above the lowest point, which is the floor: the floor is at 0, wall points at their height, up to
    # what gravity's error (under 0.5 degrees, test above) moves a point at the scene's largest distance.
    tol = 100 * depth.max() * np.sqrt(1 + (W / 2 / F) ** 2 + (H / 2 / F) ** 2) * np.sin(np.radians(0.5))
    np.testing.assert_allclose(hha.height[floor], 0.0, atol=tol)
    np.testing.assert_allclose(hha.height[~floor], 100 * height[~floor], atol=tol)
    if pitch == roll == 0:  # level: exact to a few millimetres
        np.testing.assert_allclose(hha.height, 100 * height, atol=0.5)
    # Angle with gravity: floor 0 degrees, wall 90, away from the floor-wall edge (normals straddle it).
    assert np.abs(hha.angle[interior(floor, 5)]).max() < 1.0
    assert np.abs(hha.angle[interior(~floor, 5)] - 90).max() < 1.0


def test_uint8_encoding_by_hand():
    # Level camera 1.2 m above the floor, wall 3 m ahead: wall disparity 31000 / 300 = 103.3 -> 103; a wall
    # pixel on the horizon (row cy, height 1.2 m) -> 120; angles: floor 0 + 38, wall 90 + 38 = 128.
    depth, floor, height, _ = scene()
    img = hha_encode(depth, CAMERA)
    assert img.dtype == np.uint8 and img.shape == (H, W, 3)
    assert (img[20:170, 20:300, 0] == 103).all()
    assert abs(int(img[119, 160, 1]) - 120) <= 1 and abs(int(img[120, 160, 1]) - 120) <= 1
    assert (img[interior(floor, 5)][:, 1] <= 1).all()
    assert (np.abs(img[interior(floor, 5)][:, 2].astype(int) - 38) <= 1).all()
    assert (np.abs(img[interior(~floor, 5)][:, 2].astype(int) - 128) <= 1).all()
    # The wall reaches 1.2 + 3 * 119.5 / 150 = 3.59 m at the top row: the height channel saturates at 255.
    assert img[0, 160, 1] == 255
    # Floor pixels nearer than 1.22 m saturate the disparity channel (31000 / 121.6 = 255): pitch down 40 degrees.
    depth, floor, _, _ = scene(pitch=40.0)
    near = floor & (depth < 1.2)
    assert near.any() and (hha_encode(depth, CAMERA)[near][:, 0] == 255).all()


def test_floor_out_of_reach_is_assumed_130cm_below():
    # A camera 0.5 m above the floor: the lowest point is less than 90 cm below it, so Gupta's rule puts the
    # floor 130 cm below the camera, and the real floor reads 80 cm.
    depth, floor, height, _ = scene(cam_height=0.5, wall=3.0)
    hha = compute_hha(depth, CAMERA)
    np.testing.assert_allclose(hha.height[floor], 80.0, atol=1.0)
    np.testing.assert_allclose(hha.height[~floor], 100 * height[~floor] + 80.0, atol=2.0)


def test_missing_depth():
    depth, floor, _, _ = scene()
    holes = np.zeros_like(floor)
    holes[100:104, 100:104] = True
    depth_with_holes = np.where(holes, 0.0, depth)
    img = hha_encode(depth_with_holes, CAMERA)
    assert (img[holes] == 0).all()  # no depth: nothing to encode
    assert (img[interior(~floor & ~holes, 5)][:, 2] >= 127).all()  # the rest is unchanged
    # Filled-in depth marked ``missing`` is encoded but not used for normals (Gupta's raw-depth mask).
    filled = hha_encode(depth, CAMERA, missing=holes)
    np.testing.assert_array_equal(filled[holes][:, 0], 103)
    assert (np.abs(filled[holes][:, 2].astype(int) - 128) <= 1).all()  # normals from the measured neighbours
    with pytest.raises(ValueError, match="no positive depth"):
        hha_encode(np.zeros((4, 4)), CAMERA)


def test_camera_from_matrix():
    k = [[518.8, 0, 325.5], [0, 519.4, 253.7], [0, 0, 1]]
    assert Camera.from_matrix(k) == Camera(518.8, 519.4, 325.5, 253.7)
    with pytest.raises(ValueError, match="3x3"):
        Camera.from_matrix([[1, 2], [3, 4]])


def test_hha_command_encodes_depth_pngs(tmp_path):
    from PIL import Image

    from fcnseg.cli import main

    depth, _, _, _ = scene()
    mm = np.round(depth * 1000).astype(np.uint16)
    src = tmp_path / "img_5001.png"
    Image.fromarray(mm).save(src)
    args = ["hha", str(src), "-o", str(tmp_path / "hha"), "--fx", str(F), "--fy", str(F), "--cx", str(CAMERA.cx),
            "--cy", str(CAMERA.cy)]
    assert main(args) == 0
    written = np.asarray(Image.open(tmp_path / "hha" / "img_5001.png"))
    np.testing.assert_array_equal(written, hha_encode(mm / 1000.0, CAMERA))
    assert main(args) == 2  # outputs exist: refused without --overwrite
    with pytest.raises(OutputError) as info:
        encode_depth_files([src], tmp_path / "hha", CAMERA)
    assert info.value.options == ("overwrite", "out_dir") and info.value.path == str(tmp_path / "hha" / src.name)
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "no_depth.png")
    with pytest.raises(DataError, match=r"no_depth\.png: depth map has no positive depth values"):
        encode_depth_files([tmp_path / "no_depth.png"], tmp_path / "hha", CAMERA)  # the error names the file
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "colour.png")
    assert main(["hha", str(tmp_path / "colour.png"), "-o", str(tmp_path / "x")]) == 2  # not a depth map
