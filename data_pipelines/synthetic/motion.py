"""Motions of the synthetic 3DPW actors: SMPL poses over time (walking, standing, gestures)
and the path each actor walks. Moved out of raw_3dpw.py unchanged (same random draws, same
poses); the SMPL joint ids are named here once.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.synthetic.raw_common import rot, wobble

# SMPL joint ids
L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3 = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
)
NECK, L_COLLAR, R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER = 12, 13, 14, 15, 16, 17
L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 18, 19, 20, 21
X, Y, Z = np.eye(3)

# (lower, upper) bounds per joint and axis of the local axis-angle, radians: a coarse
# anatomical box the motions stay in (checked after composing the rotations).
LIMITS = {
    L_HIP: ((-1.4, -0.5, -0.3), (0.6, 0.5, 0.8)),
    R_HIP: ((-1.4, -0.5, -0.8), (0.6, 0.5, 0.3)),
    L_KNEE: ((-0.05, -0.2, -0.2), (2.2, 0.2, 0.2)),
    R_KNEE: ((-0.05, -0.2, -0.2), (2.2, 0.2, 0.2)),
    L_ANKLE: ((-0.5, -0.3, -0.3), (0.6, 0.3, 0.3)),
    R_ANKLE: ((-0.5, -0.3, -0.3), (0.6, 0.3, 0.3)),
}


def body_motion(rng: np.random.Generator, t: np.ndarray, walk: float, gesture: str) -> np.ndarray:
    """Local SMPL axis-angle (T, 24, 3) of body joints 1..23 (the root is set by the caller).

    Local rotations are expressed in the rest (T-pose) frame: x = subject's left, y up, z
    forward. Hip flexion is about -x, knee flexion about +x, arms are lowered about z and swing
    about x, elbows bend about y (left: -y, right: +y). `walk` in [0, 1] scales the gait.
    """
    T = len(t)
    P = np.zeros((T, 24, 3))
    phase = 2 * np.pi * rng.uniform(0.8, 1.0) * t + rng.uniform(0, 2 * np.pi)
    s, c = np.sin(phase), np.cos(phase)
    a = walk

    def put(j, r):
        P[:, j] = r.as_rotvec()

    hip = 0.42 * a
    put(
        L_HIP,
        rot(X, -hip * s - 0.04 + wobble(rng, t, 0.04)) * rot(Z, 0.05 + wobble(rng, t, 0.03)),
    )
    put(
        R_HIP,
        rot(X, hip * s - 0.04 + wobble(rng, t, 0.04)) * rot(Z, -0.05 + wobble(rng, t, 0.03)),
    )
    knee_l = 0.08 + a * (0.15 + 0.95 * np.maximum(0.0, c) ** 2) + np.abs(wobble(rng, t, 0.04))
    knee_r = 0.08 + a * (0.15 + 0.95 * np.maximum(0.0, -c) ** 2) + np.abs(wobble(rng, t, 0.04))
    put(L_KNEE, rot(X, knee_l))
    put(R_KNEE, rot(X, knee_r))
    put(L_ANKLE, rot(X, 0.12 * a * np.sin(phase + 1.2) + wobble(rng, t, 0.04)))
    put(R_ANKLE, rot(X, -0.12 * a * np.sin(phase + 1.2) + wobble(rng, t, 0.04)))
    for j, share in ((SPINE1, 0.4), (SPINE2, 0.3), (SPINE3, 0.3)):
        put(
            j,
            rot(Y, share * (0.12 * a * s + wobble(rng, t, 0.1)))
            * rot(X, share * (0.1 + wobble(rng, t, 0.06)))
            * rot(Z, share * wobble(rng, t, 0.06)),
        )
    put(NECK, rot(Y, wobble(rng, t, 0.12, 0.1, 0.5)) * rot(X, 0.05 + wobble(rng, t, 0.05)))
    put(HEAD, rot(Y, wobble(rng, t, 0.2, 0.1, 0.5)) * rot(X, wobble(rng, t, 0.08)))
    put(L_COLLAR, rot(Z, wobble(rng, t, 0.04)))
    put(R_COLLAR, rot(Z, wobble(rng, t, 0.04)))
    # arms hang (rotation about z) and swing against the legs (about x; + = backwards)
    down_l = 1.22 + wobble(rng, t, 0.06)
    down_r = 1.22 + wobble(rng, t, 0.06)
    swing = 0.35 * a
    sw_l = swing * s + wobble(rng, t, 0.06)
    sw_r = -swing * s + wobble(rng, t, 0.06)
    elb_l = 0.25 + 0.3 * a * (1 + s) / 2 + np.abs(wobble(rng, t, 0.1))
    elb_r = 0.25 + 0.3 * a * (1 - s) / 2 + np.abs(wobble(rng, t, 0.1))
    elbow_r_z = np.zeros(T)
    if gesture == 'wave':  # right arm raised to the side, forearm up, waving
        down_r = 0.25 + wobble(rng, t, 0.05)
        sw_r = -0.3 + 0.0 * t
        elb_r = 0.2 + 0.0 * t
        elbow_r_z = -1.3 + 0.35 * np.sin(2 * np.pi * rng.uniform(1.0, 1.6) * t)
    elif gesture == 'phone':  # right hand at the ear
        down_r = 1.05 + wobble(rng, t, 0.03)
        sw_r = -0.35 + wobble(rng, t, 0.03)
        elb_r = 2.1 + wobble(rng, t, 0.05)
    elif gesture == 'point':  # left arm pointing forward
        down_l = 1.1 + wobble(rng, t, 0.05)
        sw_l = -1.1 + wobble(rng, t, 0.08)
        elb_l = 0.15 + np.abs(wobble(rng, t, 0.05))
    put(L_SHOULDER, rot(X, sw_l) * rot(Z, -down_l))
    put(R_SHOULDER, rot(X, sw_r) * rot(Z, down_r))
    put(L_ELBOW, rot(Y, -elb_l))
    put(R_ELBOW, rot(Z, elbow_r_z) * rot(Y, elb_r))
    put(L_WRIST, rot(Z, wobble(rng, t, 0.1)) * rot(Y, wobble(rng, t, 0.1)))
    put(R_WRIST, rot(Z, wobble(rng, t, 0.1)) * rot(Y, wobble(rng, t, 0.1)))
    for j, (lo, hi) in LIMITS.items():
        P[:, j] = np.clip(P[:, j], lo, hi)
    return P


def actor_track(rng, t, start_xz, heading0, turn_rate, walk, speed):
    """Global orientation (T, 3) and ground-plane position (T, 2) of one actor (y up)."""
    heading = heading0 + turn_rate * t
    yaw = heading - 0.06 * walk * np.sin(2 * np.pi * 0.9 * t) + wobble(rng, t, 0.03)
    lean = 0.04 * walk + wobble(rng, t, 0.02)
    go = (rot(Y, yaw) * rot(X, lean)).as_rotvec()
    dt = np.diff(t, prepend=t[0])
    vel = speed * np.stack([np.sin(heading), np.cos(heading)], 1)  # the body faces +z
    xz = np.asarray(start_xz, np.float64) + np.cumsum(vel * dt[:, None], axis=0)
    return go, xz
