"""2D-pose input forms, made on device: skeleton images, heatmaps, keypoint arrays; pixel norm.

ExtPose feeds 2D poses as skeleton images through the ViT's own patch embedding; the heatmap
and 1D-array forms exist for the input-form ablation. Everything here is pure
jax.numpy, jit-able, differentiable in the keypoint coordinates, and batched over any leading
dims of `keypoints (..., J, 3)` = (x, y, conf).

Pixel convention: pixel (row i, column j) has its centre at (x, y) = (j, i), as OpenCV's integer
drawing coordinates, so a keypoint at (j, i) lands on that pixel's centre. Keypoints are in the
pixels of the image being made. HMR 2.0 / HaMeR crops are 256 x 256 and the ViT sees the central
192 columns (upstream's forward_step): either render at 256 x 256 and slice [:, 32:-32]
like the RGB crop, or render at 256 x 192 with x shifted by -32 (the same pixels).

Skeleton images (`render_skeleton`) follow the ControlNet OpenPose look (our choice):
black canvas, limbs in the layout's limb palette dimmed by 0.6, joints as discs of the joint
colour, limbs first in layout order then joints, each composited 'over' what is already drawn.
Deviations, on purpose: limbs are round-capped strokes (OpenCV's thick line) instead of
ControlNet's ellipses -- the caps hide under the joint discs; sizes scale with the crop instead
of ControlNet's absolute 4 px; and edges are anti-aliased analytically so the image is a smooth
function of the keypoints. Hands use the layout's palette (OpenPose / HaMeR hand colours) rather
than ControlNet's HSV edges and blue joints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from extpose_jax import skeletons

# ImageNet statistics on the [0, 1] scale; HMR 2.0 / HaMeR apply them on [0, 255] as
# (p - 255 mean) / (255 std).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONTROLNET_LIMB_BRIGHTNESS = 0.6
DEFAULT_CONF_THRESHOLD = 0.3  # DWPose / ControlNet's keypoint cut-off
# Coverage ramp end past the radius; see _coverage.
_EDGE = 1.2
# Below this squared distance the distance is clamped: sqrt has an infinite derivative at 0.
_MIN_SQ_DIST = 1e-12


def normalize_image(image, scale=255.0):
    """(..., H, W, 3) RGB on [0, scale] -> ImageNet-normalised float32, as HMR 2.0 / HaMeR.

    scale=255 gives (p - 255 mean) / (255 std) exactly as upstream; rendered skeleton images are
    on [0, 1], so pass scale=1.0 (they are normalised like RGB; the paper does not say).
    """
    image = jnp.asarray(image, jnp.float32)
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * scale
    std = jnp.asarray(IMAGENET_STD, jnp.float32) * scale
    return (image - mean) / std


def default_thickness(height: int, width: int) -> float:
    """Limb thickness (OpenCV's meaning) for a crop: 4 at 256 x 192, i.e. strokes ~5.4 px wide.

    ControlNet's limbs are ~9 px wide on a ~512 px canvas in which a person spans roughly 300 px;
    a person-filling 256 crop gets about the same width relative to the body. Always even:
    OpenCV's LINE_AA draws an odd thickness like the next even one (measured: 5 looks like 6),
    so only even values mean the same thing here and there.
    """
    return float(2 * max(1, round(min(height, width) / 96)))


def _split(keypoints, num_joints=None):
    """(..., J, 3) -> (leading dims, (M, J, 3) float32); num_joints None accepts any J."""
    kp = jnp.asarray(keypoints, jnp.float32)
    num_joints = kp.shape[-2] if num_joints is None and kp.ndim >= 2 else num_joints
    if kp.ndim < 2 or kp.shape[-2:] != (num_joints, 3):
        raise ValueError(f'expected keypoints (..., {num_joints}, 3), got {tuple(kp.shape)}')
    return kp.shape[:-2], kp.reshape((-1, num_joints, 3))


def _palette(colors, count):
    """(count, 3) float32 in [0, 1]; white when the layout has no palette (smpl24, mano16)."""
    if len(colors) == 0:
        return np.ones((count, 3), np.float32)
    return np.asarray(colors, np.float32).reshape(count, 3) / 255.0


def _segment_distance(xs, ys, a, b):
    """Distance from every pixel centre to segment a-b. xs (W,), ys (H,), a/b (M, 2) -> (M, H, W).

    The projection parameter is clamped to [0, 1] (round caps); a zero-length segment is a point.
    Squared distances are clamped before the sqrt so the gradient stays finite on the segment.
    """
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    abx, aby = (b[:, 0] - a[:, 0])[:, None, None], (b[:, 1] - a[:, 1])[:, None, None]
    px, py = xs[None, None, :] - ax, ys[None, :, None] - ay
    denom = jnp.maximum(abx * abx + aby * aby, _MIN_SQ_DIST)
    t = jnp.clip((px * abx + py * aby) / denom, 0.0, 1.0)
    dx, dy = px - t * abx, py - t * aby
    return jnp.sqrt(jnp.maximum(dx * dx + dy * dy, _MIN_SQ_DIST))


def _coverage(dist, radius):
    """Distance -> pixel coverage, with OpenCV's meaning of thickness (= 2 radius) and radius.

    Calibrated on cv2.line / cv2.circle with LINE_AA (measured, OpenCV 5.0): a pixel whose centre
    lies within `radius` of the shape is fully covered, one pixel further out gets ~0.2, two
    pixels out nothing. A linear ramp clip(radius + 1.2 - dist, 0, 1) reproduces that profile, so
    a stroke of thickness t covers about t + 1.4 pixels across, like OpenCV's, and the total ink
    of a skeleton agrees with an OpenCV drawing to a few percent.
    """
    return jnp.clip(radius + _EDGE - dist, 0.0, 1.0)


def render_skeleton(
    keypoints,
    layout,
    height: int = 256,
    width: int = 192,
    thickness=None,
    joint_radius=None,
    conf_threshold: float = DEFAULT_CONF_THRESHOLD,
    limb_brightness: float = CONTROLNET_LIMB_BRIGHTNESS,
    conf_alpha: bool = False,
    draw_joints: bool = True,
):
    """ControlNet-style skeleton image: keypoints (..., J, 3) pixels (x, y, conf) -> (..., H, W, 3).

    Args:
      keypoints: (..., J, 3) in the pixels of the output image (see the module docstring).
      layout: a `skeletons.Layout` or its name (openpose18, body25, hand21, ...); static.
      height, width: output size (static).
      thickness: limb stroke thickness in OpenCV's sense (see `_coverage`; any float works,
        compare with OpenCV at even values); None -> default_thickness (4 at 256 x 192).
      joint_radius: joint disc radius; None -> thickness / 2 (ControlNet: radius = half-width).
      conf_threshold: joints with conf below it are not drawn, nor any limb touching them.
      limb_brightness: limb colour factor (ControlNet's 0.6); joints keep full colour.
      conf_alpha: if True, opacity is also multiplied by the confidence (a limb by the smaller of
        its two joints'), so uncertain detections look faint; False is ControlNet's on/off look.
      draw_joints: draw the joint discs.

    Returns float32 (..., H, W, 3) RGB in [0, 1] on black.

    Cost: limbs and joints are drawn one at a time with lax.scan, each as an analytic distance
    field over the whole canvas: ~(L + J) x H x W x 20 flops (about 35 MFLOP for OpenPose-18 at
    256 x 192) and O(M x H x W) live memory for M images -- never O(L x H x W). Under autodiff the
    scan keeps per-step residuals, O((L + J) x M x H x W); fine for a few hundred crops, chunk
    (lax.map) beyond. Gradients w.r.t. x, y are finite everywhere (on a segment, at coincident
    joints) and non-zero only in the ~1 px anti-aliased fringe, like any rasteriser; the
    confidence gate itself has no gradient.
    """
    layout = skeletons.get_layout(layout)
    lead, kp = _split(keypoints, layout.num_joints)
    thickness = default_thickness(height, width) if thickness is None else thickness
    joint_radius = thickness / 2.0 if joint_radius is None else joint_radius
    xy, conf = kp[..., :2], kp[..., 2]
    # stop_gradient: visibility is a hard decision, not something to learn through.
    visible = jax.lax.stop_gradient(conf) >= conf_threshold
    weight = jnp.where(visible, jnp.clip(conf, 0.0, 1.0) if conf_alpha else 1.0, 0.0)  # (M, J)

    xs = jnp.arange(width, dtype=jnp.float32)
    ys = jnp.arange(height, dtype=jnp.float32)

    def over(image, alpha, color):
        return image * (1.0 - alpha[..., None]) + alpha[..., None] * color

    def limb_step(image, item):
        a, b, w, color = item
        alpha = _coverage(_segment_distance(xs, ys, a, b), thickness / 2.0) * w[:, None, None]
        return over(image, alpha, color), None

    def joint_step(image, item):
        p, w, color = item
        alpha = _coverage(_segment_distance(xs, ys, p, p), joint_radius) * w[:, None, None]
        return over(image, alpha, color), None

    image = jnp.zeros((kp.shape[0], height, width, 3), jnp.float32)
    limbs = layout.limb_array
    if len(limbs):
        limb_colors = _palette(layout.limb_colors, len(limbs)) * limb_brightness
        limb_weight = jnp.minimum(weight[:, limbs[:, 0]], weight[:, limbs[:, 1]])
        items = (
            jnp.moveaxis(xy[:, limbs[:, 0]], 1, 0),
            jnp.moveaxis(xy[:, limbs[:, 1]], 1, 0),
            limb_weight.T,
            jnp.asarray(limb_colors),
        )
        image, _ = jax.lax.scan(limb_step, image, items)
    if draw_joints:
        joint_colors = _palette(layout.joint_colors, layout.num_joints)
        items = (jnp.moveaxis(xy, 1, 0), weight.T, jnp.asarray(joint_colors))
        image, _ = jax.lax.scan(joint_step, image, items)
    return image.reshape(lead + (height, width, 3))


def gaussian_heatmaps(
    keypoints,
    height: int = 256,
    width: int = 192,
    sigma: float = 2.0,
    stride: int = 1,
    conf_threshold: float = 0.0,
):
    """Confidence-weighted Gaussians: (..., J, 3) -> (..., height // stride, width // stride, J).

    Cell (i, j) samples image point (x, y) = (j stride, i stride) (mmpose / ViTPose: keypoint /
    stride), sigma is in cells (ViTPose: 2 at 64 x 48, stride 4). Heatmap j peaks at its keypoint
    with value conf_j (exactly, when the keypoint lies on a cell), and is all zero when
    conf < conf_threshold or conf <= 0. Built separably (exp(a + b) = exp(a) exp(b)), so the cost is
    the output size. The output is J channels; `heatmap_image` folds it to RGB for a 3-channel
    patch embedding.
    """
    lead, kp = _split(keypoints)
    h, w = height // stride, width // stride
    cx, cy, conf = kp[..., 0] / stride, kp[..., 1] / stride, kp[..., 2]
    gate = jax.lax.stop_gradient(conf)
    weight = jnp.where((gate >= conf_threshold) & (gate > 0), conf, 0.0)  # (M, J)
    gx = jnp.exp(
        -((jnp.arange(w, dtype=jnp.float32)[None, None] - cx[..., None]) ** 2) / (2.0 * sigma**2)
    )  # (M, J, w)
    gy = jnp.exp(
        -((jnp.arange(h, dtype=jnp.float32)[None, None] - cy[..., None]) ** 2) / (2.0 * sigma**2)
    )  # (M, J, h)
    maps = jnp.einsum('mjh,mjw,mj->mhwj', gy, gx, weight)
    return maps.reshape(lead + (h, w, kp.shape[1]))


def heatmap_image(heatmaps, layout):
    """(..., h, w, J) heatmaps -> (..., h, w, 3): per pixel the max over joints of heat x colour.

    ExtPose adds no parameters, so a heatmap input must enter the RGB patch embedding as an image;
    tinting each joint with the layout's joint colour keeps the joints apart, like the skeleton.
    """
    layout = skeletons.get_layout(layout)
    colors = jnp.asarray(_palette(layout.joint_colors, layout.num_joints))  # (J, 3)
    return jnp.max(heatmaps[..., None] * colors, axis=-2)


def keypoint_tokens(keypoints, height: int = 256, width: int = 192, conf_threshold: float = 0.0):
    """1D keypoint input (the array ablation): (..., J, 3) pixels -> (..., J, 3) normalised.

    x_n = (x - width / 2) / S, y_n = (y - height / 2) / S with S = max(height, width): one scale
    for both axes (aspect kept), and for the 256 x 192 view of a 256 crop these are exactly HMR
    2.0's normalised crop units (crop pixel / 256 - 0.5), roughly [-0.5, 0.5]. The third channel
    is conf. Joints with conf < conf_threshold (or conf <= 0) become (0, 0, 0), so a missing joint
    has one fixed code instead of arbitrary coordinates. Only the normalisation lives here; the
    model that uses this form adds the Linear(3 -> C) embedding (and a joint-index embedding).
    """
    lead, kp = _split(keypoints)
    scale = float(max(height, width))
    x = (kp[..., 0] - width / 2.0) / scale
    y = (kp[..., 1] - height / 2.0) / scale
    conf = kp[..., 2]
    gate = jax.lax.stop_gradient(conf)
    keep = (gate >= conf_threshold) & (gate > 0)
    out = jnp.where(keep[..., None], jnp.stack([x, y, conf], axis=-1), 0.0)
    return out.reshape(lead + out.shape[1:])


__all__ = [
    'normalize_image',
    'default_thickness',
    'render_skeleton',
    'gaussian_heatmaps',
    'heatmap_image',
    'keypoint_tokens',
    'IMAGENET_MEAN',
    'IMAGENET_STD',
]
