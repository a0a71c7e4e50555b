"""Rotation and camera geometry shared by the body models, heads and losses.

All functions are pure ``jax.numpy``, batch over arbitrary leading dimensions,
are ``jit``-able and have finite gradients everywhere the models can land,
including the identity rotation (which the zero-initialised pose residuals hit
on step 0).

Conventions
-----------
* Axis-angle: a 3-vector whose direction is the axis and whose norm is the
  angle in radians (right-hand rule).
* Quaternions are ``(w, x, y, z)``, scalar first.  Outputs are unit quaternions
  in the ``w >= 0`` hemisphere; note that SciPy uses ``(x, y, z, w)``.
* Rotation matrices act on column vectors: ``x' = R @ x``.
* 6D rotations follow HMR 2.0 / HaMeR (``rot6d_to_rotmat``): the two 3-vectors are the
  *contiguous* halves ``x[..., 0:3]`` and ``x[..., 3:6]`` and become the first
  two *columns* of ``R``.  SPIN's interleaved split is NOT used.
* Cameras follow HMR 2.0 (``forward_step``): a crop camera ``(s, tx, ty)`` predicted for
  a square crop of ``crop_size`` pixels with focal length ``focal_length``.
"""

import jax.numpy as jnp

# Below this squared angle the closed forms lose precision (or their autodiff
# graph divides 0 by 0), so a Taylor polynomial in theta^2 is used instead.  At
# theta = 1e-2 the dropped theta^6 term is ~1e-16, far below fp32 resolution.
_SMALL_ANGLE_SQ = 1e-4

# torch.nn.functional.normalize's default eps, so 6D decoding matches upstream.
_NORMALIZE_EPS = 1e-12


def _split_small(theta_sq):
    """Return (is_small, theta) with a theta that is safe to divide by.

    The "double where" trick: masked-out lanes still get differentiated, so the
    closed-form branch must never see theta = 0 or its NaN gradient leaks
    through jnp.where as 0 * NaN = NaN.
    """
    is_small = theta_sq < _SMALL_ANGLE_SQ
    theta = jnp.sqrt(jnp.where(is_small, 1.0, theta_sq))
    return is_small, theta


def _sinc(theta_sq, is_small, theta):
    """sin(theta) / theta."""
    taylor = 1.0 - theta_sq / 6.0 + theta_sq**2 / 120.0
    return jnp.where(is_small, taylor, jnp.sin(theta) / theta)


def _skew(v):
    """Cross-product matrix: _skew(v) @ u == cross(v, u)."""
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = jnp.zeros_like(x)
    rows = [
        jnp.stack([zero, -z, y], axis=-1),
        jnp.stack([z, zero, -x], axis=-1),
        jnp.stack([-y, x, zero], axis=-1),
    ]
    return jnp.stack(rows, axis=-2)


def axis_angle_to_matrix(aa):
    """Rodrigues' formula, (..., 3) -> (..., 3, 3).

    R = I + sinc(t) K + (1 - cos t)/t^2 K^2 with K = skew(aa), t = |aa|.
    1 - cos t is written as 2 sin^2(t/2) so it does not cancel in fp32 for
    small angles, and both coefficients switch to Taylor series near t = 0 so
    the Jacobian there is exactly the skew generator instead of NaN.
    """
    aa = jnp.asarray(aa)
    theta_sq = jnp.sum(aa * aa, axis=-1)
    is_small, theta = _split_small(theta_sq)
    a = _sinc(theta_sq, is_small, theta)
    half_sinc = _sinc(theta_sq / 4.0, is_small, theta / 2.0)
    b = 0.5 * half_sinc**2
    k = _skew(aa)
    eye = jnp.eye(3, dtype=aa.dtype)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def axis_angle_to_quaternion(aa):
    """(..., 3) axis-angle -> (..., 4) unit quaternion (w, x, y, z), w >= 0 for angles <= pi."""
    aa = jnp.asarray(aa)
    theta_sq = jnp.sum(aa * aa, axis=-1)
    is_small, theta = _split_small(theta_sq)
    half_sq = theta_sq / 4.0
    w = jnp.where(is_small, 1.0 - half_sq / 2.0 + half_sq**2 / 24.0, jnp.cos(theta / 2.0))
    # sin(t/2)/t = sinc(t/2)/2 keeps the vector part smooth through t = 0.
    xyz = 0.5 * _sinc(half_sq, is_small, theta / 2.0)[..., None] * aa
    return jnp.concatenate([w[..., None], xyz], axis=-1)


def quaternion_to_axis_angle(q):
    """(..., 4) quaternion (w, x, y, z), any non-zero norm -> (..., 3) axis-angle with angle in [0, pi].

    atan2(|v|, w) stays well conditioned at both ends of the range, unlike
    acos(w) (flat at 0) or asin(|v|) (flat at pi).
    """
    q = jnp.asarray(q)
    # Normalising first means "small |v|" also implies w ~ 1, which the
    # Taylor branch below relies on.
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    # q and -q are the same rotation; pick w >= 0 so the angle is <= pi.
    q = jnp.where(q[..., :1] < 0, -q, q)
    w, v = q[..., 0], q[..., 1:]
    v_sq = jnp.sum(v * v, axis=-1)
    is_small, v_norm = _split_small(v_sq)
    # Near zero angle, 2 atan(|v|/w)/|v| -> (2/w)(1 - |v|^2/(3 w^2)).  w_safe
    # keeps the unused branch away from w = 0 (angle pi) so no inf reaches the
    # gradient.
    w_safe = jnp.where(is_small, w, 1.0)
    taylor = 2.0 / w_safe * (1.0 - v_sq / (3.0 * w_safe**2))
    scale = jnp.where(is_small, taylor, 2.0 * jnp.arctan2(v_norm, w) / v_norm)
    return scale[..., None] * v


def quaternion_to_matrix(q):
    """(..., 4) quaternion (w, x, y, z) -> (..., 3, 3).

    Dividing by |q|^2 makes any non-zero q (e.g. a raw network output) map to
    a proper rotation, the same as its normalised version.
    """
    q = jnp.asarray(q)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    s = 2.0 / jnp.sum(q * q, axis=-1)
    rows = [
        jnp.stack([1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)], axis=-1),
        jnp.stack([s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)], axis=-1),
        jnp.stack([s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)], axis=-1),
    ]
    return jnp.stack(rows, axis=-2)


def matrix_to_quaternion(R):
    """(..., 3, 3) rotation -> (..., 4) unit quaternion (w, x, y, z) with w >= 0.

    Shepperd's method: for a rotation, M below equals 4 q q^T, so any row i
    gives q = M[i] / (2 sqrt(M[i, i])).  M's diagonal sums to 4 for any 3x3
    input, so the largest entry is >= 1 and using its row keeps the division
    well conditioned for every rotation, including angles near pi where w -> 0.
    The choice is an argmax + gather, so it jits and differentiates.
    """
    R = jnp.asarray(R)
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = [
        [R[..., i, j] for j in range(3)] for i in range(3)
    ]
    m = jnp.stack(
        [
            jnp.stack([1 + r00 + r11 + r22, r21 - r12, r02 - r20, r10 - r01], axis=-1),
            jnp.stack([r21 - r12, 1 + r00 - r11 - r22, r01 + r10, r02 + r20], axis=-1),
            jnp.stack([r02 - r20, r01 + r10, 1 - r00 + r11 - r22, r12 + r21], axis=-1),
            jnp.stack([r10 - r01, r02 + r20, r12 + r21, 1 - r00 - r11 + r22], axis=-1),
        ],
        axis=-2,
    )
    diag = jnp.diagonal(m, axis1=-2, axis2=-1)
    best = jnp.argmax(diag, axis=-1)[..., None]
    row = jnp.take_along_axis(m, best[..., None], axis=-2)[..., 0, :]
    pivot = jnp.take_along_axis(diag, best, axis=-1)
    q = row / (2.0 * jnp.sqrt(pivot))
    # Re-normalise to absorb non-orthogonality in R (e.g. fp32 round-off).
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    return jnp.where(q[..., :1] < 0, -q, q)


def matrix_to_axis_angle(R):
    """(..., 3, 3) -> (..., 3), angle in [0, pi]; via quaternions to stay robust near 0 and pi."""
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def _normalize(v):
    """v / max(|v|, eps), i.e. torch.nn.functional.normalize(v, dim=-1).

    Clamping the squared norm (before the sqrt) gives identical values but a
    finite gradient when v = 0.
    """
    norm = jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), _NORMALIZE_EPS**2))
    return v / norm


def rot6d_to_matrix(x):
    """(..., 6) HMR 2.0 6D rotation -> (..., 3, 3).

    Gram-Schmidt on the contiguous halves a1 = x[..., 0:3], a2 = x[..., 3:6];
    the orthonormal b1, b2, b1 x b2 become the COLUMNS of R.
    """
    x = jnp.asarray(x)
    a1, a2 = x[..., 0:3], x[..., 3:6]
    b1 = _normalize(a1)
    b2 = _normalize(a2 - jnp.sum(b1 * a2, axis=-1, keepdims=True) * b1)
    b3 = jnp.cross(b1, b2)
    return jnp.stack([b1, b2, b3], axis=-1)


def matrix_to_rot6d(R):
    """(..., 3, 3) -> (..., 6): first column then second column (inverse of rot6d_to_matrix)."""
    R = jnp.asarray(R)
    return jnp.concatenate([R[..., :, 0], R[..., :, 1]], axis=-1)


def perspective_projection(points, translation, focal_length, camera_center, rotation=None):
    """Pinhole projection as in HMR 2.0: (..., N, 3) -> (..., N, 2) pixels.

    X_cam = rotation @ X + translation, then (f * X_cam.xy / X_cam.z) + center.

    Args:
      points: (..., N, 3) points in the model frame.
      translation: (..., 3) camera translation.
      focal_length: scalar, (..., 1) or (..., 2) as (fx, fy).
      camera_center: (..., 2) principal point (cx, cy).
      rotation: optional (..., 3, 3); identity when None.
    """
    points = jnp.asarray(points)
    if rotation is not None:
        points = jnp.einsum('...ij,...nj->...ni', rotation, points)
    points = points + jnp.asarray(translation)[..., None, :]
    # No epsilon on z: same as upstream; points behind/at the camera are the caller's problem.
    xy = points[..., :2] / points[..., 2:3]
    focal = jnp.asarray(focal_length)
    if focal.ndim == 0:
        focal = focal[None]
    return xy * focal[..., None, :] + jnp.asarray(camera_center)[..., None, :]


def cam_crop_to_translation(pred_cam, focal_length=5000.0, crop_size=256.0):
    """Crop camera (s, tx, ty) -> camera translation (tx, ty, 2 f / (crop_size s)).

    Places the model so that a weak-perspective scale s on a crop of
    ``crop_size`` pixels is reproduced by a pinhole camera of focal
    ``focal_length`` centred on the crop.  The 1e-9 matches upstream.
    """
    pred_cam = jnp.asarray(pred_cam)
    s, tx, ty = pred_cam[..., 0], pred_cam[..., 1], pred_cam[..., 2]
    tz = 2.0 * focal_length / (crop_size * s + 1e-9)
    return jnp.stack([tx, ty, tz], axis=-1)


def cam_crop_to_full(
    pred_cam, box_center, box_size, image_size, focal_length=5000.0, crop_size=256.0
):
    """Crop camera -> translation for a camera on the full image (HMR 2.0 demo).

    The full-image camera has principal point (W/2, H/2) and focal
    ``focal_length / crop_size * max(W, H)``, i.e. the crop's field of view
    stretched to the longer image side.  Points on the z = 0 plane of the model
    frame then project exactly where the crop camera put them once crop pixels
    are mapped back through the box; other depths agree only to
    weak-perspective accuracy, because the two cameras differ in distance and
    optical axis.

    Args:
      pred_cam: (..., 3) crop camera (s, tx, ty).
      box_center: (..., 2) box centre (cx, cy) in image pixels.
      box_size: (...,) side of the square box in image pixels.
      image_size: (..., 2) given as (W, H) -- width first, unlike array shapes.
      focal_length, crop_size: the crop camera's focal length and crop side.

    Returns:
      translation (..., 3) and the full-image focal length (...,).
    """
    pred_cam = jnp.asarray(pred_cam)
    box_center = jnp.asarray(box_center)
    image_size = jnp.asarray(image_size)
    s, tx, ty = pred_cam[..., 0], pred_cam[..., 1], pred_cam[..., 2]
    width, height = image_size[..., 0], image_size[..., 1]
    focal_full = focal_length / crop_size * jnp.maximum(width, height)
    # 1e-9 as upstream; it only matters for a collapsed scale s = 0.
    bs = jnp.asarray(box_size) * s + 1e-9
    t = jnp.stack(
        [
            2.0 * (box_center[..., 0] - width / 2.0) / bs + tx,
            2.0 * (box_center[..., 1] - height / 2.0) / bs + ty,
            2.0 * focal_full / bs,
        ],
        axis=-1,
    )
    return t, focal_full
