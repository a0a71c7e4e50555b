"""The synthetic world's CPU renderer (data_pipelines/synthetic/render.py), its textured planes,
occluders and blur (imaging.py), and the 3DPW camera's look-at: hand-computed cases."""

import numpy as np

from data_pipelines.synthetic import imaging, raw_3dpw, render


def _K(w=64, h=48, f=60.0):
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])


def test_render_box_mask_depth_and_culling():
    K = _K()
    v, f = render.box_mesh([0, 0, 2.0], [0.5, 0.5, 0.5])
    bg = np.full((48, 64, 3), 30, np.uint8)
    img, mask, depth = render.render_meshes(bg, [(v, f, (200, 100, 50))], K)
    assert mask[24, 32] == 0 and mask[0, 0] == render.BACKGROUND_ID
    np.testing.assert_allclose(depth[24, 32], 1.75, atol=1e-4)  # the front face
    assert np.isinf(depth[0, 0]) and (img[0, 0] == 30).all()
    assert (img[24, 32] != 30).any()
    # the box's silhouette: +-0.25 m at 1.75 m -> +-8.6 px about the centre
    cols = np.flatnonzero(mask[24] == 0)
    assert abs(cols.min() - (32 - 8.57)) <= 1 and abs(cols.max() - (32 + 8.57)) <= 1
    # a triangle facing away is culled unless double-sided; nearer meshes win
    tri = np.array([[0, 0, 1.0], [0.3, 0, 1.0], [0, 0.3, 1.0]])  # normal +z: away
    _, m1, _ = render.render_meshes(bg, [(tri, [[0, 1, 2]], (255, 0, 0))], K)
    assert (m1 == render.BACKGROUND_ID).all()
    _, m2, d2 = render.render_meshes(
        bg, [(v, f, (0, 0, 255)), render.Mesh(tri, np.array([[0, 1, 2]]), (255, 0, 0), True)], K
    )
    assert m2[28, 36] == 1 and abs(d2[28, 36] - 1.0) < 1e-6
    # anti-aliased rendering agrees on the coverage
    img_s, mask_s, _ = render.render_meshes(bg, [(v, f, (200, 100, 50))], K, supersample=2)
    assert mask_s.shape == mask.shape and abs((mask_s == 0).sum() - (mask == 0).sum()) < 40


def test_render_lambert_shading_follows_the_light():
    K = _K()
    v, f = render.box_mesh([0, 0, 2.0], [0.5, 0.5, 0.5])
    bg = np.zeros((48, 64, 3), np.uint8)
    lit, _, _ = render.render_meshes(bg, [(v, f, (200, 200, 200))], K, light_dir=(0, 0, -1))
    dark, _, _ = render.render_meshes(bg, [(v, f, (200, 200, 200))], K, light_dir=(0, 0, 1))
    assert lit[24, 32, 0] > dark[24, 32, 0] + 50


def test_render_plane_horizon_and_occluders():
    K = _K(64, 48)
    R, t = raw_3dpw.look_at([0, 1.5, 0], [0, 1.5, 10])  # level camera, 1.5 m above ground
    img = np.zeros((48, 64, 3), np.uint8)
    tex = np.full((8, 8, 3), 200, np.uint8)
    depth = imaging.render_plane(img, K, R, t, [0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], tex, 1.0)
    assert np.isinf(depth[:24]).all() and (img[:24] == 0).all()  # sky: above the horizon
    assert np.isfinite(depth[25:]).all() and (img[30:] == 200).all()
    # the bottom row looks down at the ground: z = 1.5 f / (v - cy)
    np.testing.assert_allclose(depth[47, 32], 1.5 * 60 / (47 - 24), rtol=1e-5)
    rng = np.random.default_rng(0)
    mask = np.full((48, 64), render.BACKGROUND_ID, np.int32)
    dmap = np.full((48, 64), np.inf, np.float32)
    occ = imaging.add_occluders(rng, img, mask, dmap, (10, 10, 40, 40), 2)
    assert occ.any() and (mask[occ] == imaging.OCCLUDER_ID).all() and (dmap[occ] == 0).all()
    assert imaging.motion_blur(img, 5, 30).shape == img.shape
    assert imaging.defocus_blur(img, 2).shape == img.shape


def test_look_at_is_a_y_up_to_y_down_rotation():
    R, t = raw_3dpw.look_at([0, 1.0, -5.0], [0, 1.0, 0])
    np.testing.assert_allclose(R @ [0, 1.0, 0], [0, -1.0, 0], atol=1e-12)  # up -> -y (image up)
    np.testing.assert_allclose(R @ [0, 0, 1.0], [0, 0, 1.0], atol=1e-12)  # looks along +z
    np.testing.assert_allclose(np.linalg.det(R), 1.0)
    np.testing.assert_allclose(R @ [0, 1.0, -5.0] + t, 0, atol=1e-12)  # the centre
