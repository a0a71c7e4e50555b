"""Hand designs shared by the FreiHAND and HInt writers: a posed right hand and its forearm.

The MANO right hand is the model file; a LEFT hand is `load_mano(is_right=False)`, the
mirror image x -> -x of the right model. Hand scenes are designed as right hands in the camera
frame; a left hand is the mirror of such a design through the camera's y-z plane: its pose is
the right pose conjugated by diag(-1, 1, 1) (axis-angle (x, y, z) -> (x, -y, -z)), which the
mirrored model turns back into exactly the mirrored right-hand mesh (`mirror_pose`).

Both writers also label each keypoint's occlusion from the render (`keypoint_occlusion`) and
store what a 2D hand detector would report for the hand (`detect_hand`, detector.py's model).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from data_pipelines.synthetic import detector, imaging, render
from data_pipelines.synthetic.raw_common import Models, align, mesh_faces, rot, unit
from extpose_jax import skeletons

# A keypoint lies inside the hand: its own skin seen up to this far in front of it still leaves
# it visible (metres; a finger's thickness).
MAX_SKIN = 0.035
# Hands have no left/right pairs within one hand: the detector never swaps joints.
_HAND_FLIP = skeletons.get_layout('hand21').flip
_TIP_JOINT = (
    15,
    3,
    6,
    12,
    9,
)  # MANO joint under each tip vertex: thumb, index, middle, ring, pinky


class HandRig:
    """Rest-pose facts of the right MANO model used to design hand poses."""

    def __init__(self, models: Models):
        right = models.mano(True)
        out = models.forward(right, np.zeros((1, 48)), np.zeros((1, 10)))
        self.joints = out['joints'][0]
        self.verts = out['vertices'][0]
        F = mesh_faces(right)
        e = np.sort(np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]]), 1)
        uniq, cnt = np.unique(e, axis=0, return_counts=True)
        self.rim = np.unique(uniq[cnt == 1])  # the open wrist loop
        wrist = self.joints[0]
        rim_c = self.verts[self.rim].mean(0)
        self.arm_axis = unit(rim_c - wrist)  # wrist -> forearm (rest)
        self.rim_radius = float(np.linalg.norm(self.verts[self.rim] - rim_c, axis=1).mean())
        palm_n = unit(np.cross(self.joints[4] - wrist, self.joints[7] - wrist))  # middle1, pinky1
        if palm_n @ (self.joints[13] - wrist) < 0:  # the thumb sits on the palm side
            palm_n = -palm_n
        self.palm_normal = palm_n
        # curl axes of the 5 fingers (MANO order: index, middle, pinky, ring, thumb)
        self.curl_axes = []
        for f in range(5):
            j1, j2 = 1 + 3 * f, 2 + 3 * f
            d = unit(self.joints[j2] - self.joints[j1])
            self.curl_axes.append(unit(np.cross(d, palm_n)))


def finger_pose(rng, rig: HandRig) -> np.ndarray:
    """45 finger values (15 joints x axis-angle), relative to a FLAT hand: a random grasp."""
    grasp = rng.uniform(0.0, 1.0) ** 1.3
    pose = np.zeros((15, 3))
    for f in range(5):
        thumb = f == 4
        base = (0.9 if not thumb else 0.5) * grasp + rng.normal(0, 0.18)
        base = float(np.clip(base, -0.05 if not thumb else -0.1, 1.5))
        spread = rng.normal(0, 0.08) + (
            0.0 if thumb else (-0.08, 0.0, 0.12, 0.05)[f] * rng.uniform(0, 1.5)
        )
        for k, share in enumerate((0.9, 1.1, 0.75) if not thumb else (0.5, 0.8, 0.9)):
            curl = base * share + rng.normal(0, 0.06)
            r = rot(rig.curl_axes[f], max(curl, -0.1))
            if k == 0:
                r = r * rot(rig.palm_normal, spread)
                if thumb:
                    r = r * rot(unit(rig.joints[14] - rig.joints[13]), rng.uniform(-0.3, 0.5))
            pose[3 * f + k] = r.as_rotvec()
    return pose.reshape(45)


def hand_orientation(rng, rig: HandRig, arm_dir_cam) -> np.ndarray:
    """Global orientation (3,) that points the rest forearm axis along arm_dir_cam, random twist."""
    R = align(rig.arm_axis, arm_dir_cam)
    twist = Rotation.from_rotvec(unit(arm_dir_cam) * rng.uniform(-np.pi, np.pi)).as_matrix()
    return Rotation.from_matrix(twist @ R).as_rotvec()


def mirror_pose(pose: np.ndarray) -> np.ndarray:
    """Right-hand axis-angle design -> the left-hand pose of its mirror image (x -> -x)."""
    p = np.asarray(pose, np.float64).reshape(-1, 3) * np.array([1.0, -1.0, -1.0])
    return p.reshape(np.shape(pose))


def arm_meshes(rig, verts, wrist, rng, skin, length=0.35):
    """A forearm (two tubes: skin, then sometimes a sleeve) continuing the open wrist loop."""
    rim_c = verts[rig.rim].mean(0)
    d = unit(rim_c - wrist)
    r0 = rig.rim_radius
    start = rim_c - 0.006 * d
    # keep the far end in front of the camera
    if d[2] < 0:
        length = min(length, max(0.05, (start[2] - 0.08) / -d[2]))
    bare = length * (rng.uniform(0.35, 0.7) if rng.random() < 0.5 else 1.0)
    out = []
    v, f = render.tube_mesh(start, start + bare * d, r0, r0 * (1 + 0.5 * bare / 0.3), 20)
    out.append(render.Mesh(v, f, skin))
    if bare < length:
        rs = r0 * (1 + 0.5 * bare / 0.3) + 0.008
        v, f = render.tube_mesh(start + (bare - 0.01) * d, start + length * d, rs, rs * 1.25, 20)
        out.append(render.Mesh(v, f, imaging.random_color(rng, 20, 220)))
    return out


def tint(rng, color, amount):
    return np.clip(np.asarray(color) * (1 - amount) + imaging.random_color(rng) * amount, 0, 255)


def hand_parts(model):
    """(face_part, own) for keypoint_occlusion: per face, the dominant MANO joint; per OpenPose
    keypoint, the joints whose skin counts as its own surface (its joint, the parent, the
    children). A mirrored (left) model keeps the vertex and face ids, so the right one serves."""
    W = np.asarray(model.weights)
    F = mesh_faces(model)
    face_part = W[F].sum(1).argmax(1)
    parents = model.parents
    mano21 = np.asarray(skeletons.MANO_TO_OPENPOSE21)
    own = []
    for j in range(21):
        m = int(mano21[j])
        m = _TIP_JOINT[m - 16] if m >= 16 else m
        near = {m} | {c for c, p in enumerate(parents) if p == m}
        if parents[m] >= 0:
            near.add(parents[m])
        own.append(near)
    return face_part, own


def keypoint_occlusion(kp3d, uv, mask, depth, face_ids, mesh_id, parts) -> np.ndarray:
    """(21,) 0/1, 1 = occluded: at the keypoint's pixel a 2D occluder, another mesh in front of
    it (the other hand, a forearm), or the hand's own surface of another part (a curled finger
    over the palm) or more than MAX_SKIN in front of it. Off-image keypoints count as visible:
    truncation is detect_hand's."""
    face_part, own = parts
    return detector.keypoint_occlusion(
        kp3d, uv, mask, depth, mesh_id, MAX_SKIN, face_ids, face_part, own
    )


def box_side(uv_verts) -> float:
    """The side of the square around a hand's projected mesh: the scale of a detector's errors."""
    return float((uv_verts.max(0) - uv_verts.min(0)).max())


def detect_hand(rng, uv, z, occluded, side, size_wh) -> np.ndarray:
    """One hand as a 2D detector reports it in one image: (21, 3) x, y, confidence (0: not
    detected) in image pixels, detector.detect on a one-frame track. uv, z: the exact keypoint
    projections and depths; occluded: keypoint_occlusion's labels; side: box_side of the hand.
    Off-image keypoints are not reported."""
    on_image = render.inside_image(uv, size_wh, z)
    occluded = np.asarray(occluded, bool)
    return detector.detect(
        uv[None], on_image[None], occluded[None], side, size_wh, _HAND_FLIP, rng
    )[0]
