"""The synthetic world's sizes and variety (raw_common.SIZES): how many sequences, actors,
genders, body shapes, camera-relative orientations, camera heights and truncated people each
size's 3DPW holds,
and that the worker pool writes the same bytes as one process.

The counts come from the real writer run over every sequence of a size, with 2 frames per
sequence at a thumbnail resolution: a sequence's people, their motion and the camera's path are
drawn from the sequence's own generator, so frames and image size change how much of them is
rendered, not who is there or where the camera goes.
"""

import glob
import hashlib
import os

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from data_pipelines import convert_3dpw
from data_pipelines import convert_common as cc
from data_pipelines.synthetic import raw_3dpw
from data_pipelines.synthetic.raw_common import SIZES

THUMB = (54, 96)  # (W, H): a fifth of the world's 270 x 480


def _people(root: str, split: str) -> list:
    """One dict per actor of the split's sequences: gender, betas, place, camera-relative yaw and
    camera height at the first frame, and whether a joint ever lies off the image."""
    out = []
    for path in sorted(glob.glob(os.path.join(root, 'sequenceFiles', split, '*.pkl'))):
        seq = convert_3dpw.load_sequence(path)
        R, t = seq['cam_poses'][0][:3, :3], seq['cam_poses'][0][:3, 3]
        height = float((-R.T @ t)[1])  # the world is y up
        K = seq['K']
        for k, gender in enumerate(seq['genders']):
            cams = seq['cam_poses'][:, :3]
            joints = (
                np.einsum('fij,fpj->fpi', cams[..., :3], seq['joints'][k]) + cams[:, None, :, 3]
            )
            uv, z = cc.project(K, joints)
            inside = cc.inside_image(uv, THUMB[::-1], z) > 0  # (H, W)
            # SMPL faces +z; in the camera, facing it is -z: yaw 0 faces the camera.
            fwd = R @ Rotation.from_rotvec(seq['poses'][k][0, :3]).apply([0.0, 0.0, 1.0])
            out.append(
                dict(
                    gender=gender,
                    betas=np.asarray(seq['betas'][k][:10]),
                    place=os.path.basename(path).split('_synth_')[0],
                    index=int(os.path.basename(path)[-6:-4]),
                    yaw=float(np.arctan2(fwd[0], -fwd[2])),
                    height=height,
                    truncated=not inside.all(),
                )
            )
    return out


@pytest.fixture(scope='module', params=['small', 'large'])
def world(request, body_model_dir, tmp_path_factory):
    size = request.param
    root = str(tmp_path_factory.mktemp(f'world_{size}'))
    spec = SIZES[size]['3dpw']
    summary = raw_3dpw.write_3dpw(
        root, str(body_model_dir), sequences=spec['sequences'], frames=2, image_size=THUMB
    )
    return size, root, summary


def test_sizes_grow_from_tests_to_ablations():
    frames = {
        size: s['3dpw']['sequences']['train'] * s['3dpw']['frames'] for size, s in SIZES.items()
    }
    assert frames['tiny'] < frames['small'] < frames['large']
    assert frames['large'] >= 2000  # thousands of training frames (1.5 people each on average)
    hands = {size: s['freihand']['train'] for size, s in SIZES.items()}
    assert hands['tiny'] < hands['small'] < hands['large']


@pytest.mark.slow
def test_3dpw_variety_counts(world):
    size, root, summary = world
    spec = SIZES[size]['3dpw']['sequences']
    assert {k: len(v) for k, v in summary['sequences'].items()} == spec
    train, test = _people(root, 'train'), _people(root, 'test')
    # Even-numbered sequences hold two people, odd ones one.
    assert len(train) == sum(2 if i % 2 == 0 else 1 for i in range(spec['train']))
    genders = [p['gender'] for p in train]
    yaws = np.array([p['yaw'] for p in train])
    octants = set(((yaws + np.pi) // (np.pi / 4)).astype(int) % 8)
    heights = np.array([p['height'] for p in train])
    betas = np.stack([p['betas'] for p in train])
    assert len({p['place'] for p in train}) >= (2 if size == 'small' else 4)
    assert min(genders.count('male'), genders.count('female')) >= (3 if size == 'small' else 20)
    assert len(octants) >= (5 if size == 'small' else 8), sorted(octants)  # of 8
    assert np.ptp(heights) > (0.4 if size == 'small' else 0.7)  # drawn in [0.9, 1.8] m
    assert betas.std(0).min() > 0.4  # every shape direction varies (drawn at 0.8)
    # Close-ups (every fifth sequence from the fourth) cut the legs off; the others do not.
    close_ups = {p['index'] for p in train if p['index'] % 5 == 3}
    assert close_ups == {p['index'] for p in train if p['truncated']}
    assert len(close_ups) == (1 if size == 'small' else 8)
    # Held out: no test person shares a training person's shape.
    gap = np.abs(np.stack([p['betas'] for p in test])[:, None] - betas[None]).max(-1)
    assert gap.min() > 0.1


def _md5s(root: str) -> dict:
    files = sorted(glob.glob(os.path.join(root, '**', '*'), recursive=True))
    return {
        os.path.relpath(f, root): hashlib.md5(open(f, 'rb').read()).hexdigest()
        for f in files
        if os.path.isfile(f)
    }


@pytest.mark.slow
def test_workers_write_the_same_bytes(body_model_dir, tmp_path):
    seqs = {'train': 2, 'test': 1}
    one = raw_3dpw.write_3dpw(
        tmp_path / 'one', str(body_model_dir), sequences=seqs, frames=2, image_size=THUMB
    )
    two = raw_3dpw.write_3dpw(
        tmp_path / 'two',
        str(body_model_dir),
        sequences=seqs,
        frames=2,
        image_size=THUMB,
        workers=2,
    )
    assert one['sequences'] == two['sequences']
    md5 = _md5s(str(tmp_path / 'one'))
    assert len(md5) == 3 * 3 and md5 == _md5s(str(tmp_path / 'two'))  # 2 jpgs + 1 pkl each


@pytest.mark.parametrize('size', ['small', 'large'])
def test_freihand_hand_variety(size, body_model_dir):
    """The hands' shapes and viewpoints (no rendering: the annotations). As in FreiHAND, the arm
    enters from below: the wrist -> middle-knuckle direction points up the image, from one
    side to the other (each 45-degree sector of the upper half), towards and away from the
    camera alike."""
    from data_pipelines.synthetic.hands import HandRig
    from data_pipelines.synthetic.raw_common import Models
    from data_pipelines.synthetic.raw_freihand import _freihand_samples

    models = Models(str(body_model_dir))
    n = SIZES[size]['freihand']['train']
    samples = _freihand_samples(0, models, HandRig(models), 'training', n)
    d = np.stack([s['xyz'][9] - s['xyz'][0] for s in samples])
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    octant = ((np.arctan2(d[:, 1], d[:, 0]) + np.pi) // (np.pi / 4)).astype(int) % 8
    share = np.bincount(octant, minlength=8) / n
    assert (share[:4] > 0.05).all() and share[4:].sum() == 0, share  # image y points down
    assert min((d[:, 2] > 0).mean(), (d[:, 2] < 0).mean()) > 0.2
    betas = np.stack([s['mano'][48:58] for s in samples])
    assert betas.std(0).min() > 0.4  # drawn at 0.7, clipped at 2
