"""The regression head's starting point, measured on a training split: <kind>_mean_params.npz.

    python -m data_pipelines.mean_params --records data/records/3dpw --out smpl_mean_params.npz

HMR 2.0 and HaMeR regress residuals on a mean pose, shape and camera that ship beside their
models (`smpl_mean_params.npz`: `pose` (144,) the 24 joints' rotations in 6D, `shape` (10,),
`cam` (3,); `mano_mean_params.npz` alike with 16 joints). Without such a file the head starts
from the identity rotation everywhere, and for the global orientation that is a body upside down
with its back to the camera (the camera looks along +z with y pointing down): the first hundred
steps of a run from scratch go into turning it round. The training loop takes this file from
the body-models folder when the config names none (heads.find_mean_params).

The mean rotation of each joint is the chordal L2 mean (scipy's Rotation.mean): the rotation
closest to the average of the rotation matrices. Betas are averaged over records that have them;
the camera is the one HMR 2.0's file stores (heads.DEFAULT_CAM), since a weak-perspective scale
says more about the crop than about the data.
"""

from __future__ import annotations

import os

import numpy as np
from scipy.spatial.transform import Rotation

from data_pipelines.atomic_file import atomic_write
from data_pipelines.record_reader import RecordReader
from extpose_jax import errors
from extpose_jax.models import heads


def mean_of_rotvecs(rotvecs: np.ndarray) -> np.ndarray:
    """(N, J, 3) axis-angle -> (6 J,) each joint's chordal L2 mean rotation in HMR 2.0's 6D
    (the rotation's first column, then its second)."""
    mats = np.stack(
        [Rotation.from_rotvec(rotvecs[:, j]).mean().as_matrix() for j in range(rotvecs.shape[1])]
    )
    return np.concatenate([mats[:, :, 0], mats[:, :, 1]], axis=-1).reshape(-1)


def mean_params(records_dir: str, split: str = 'train') -> dict:
    """{'pose': (6 J,), 'shape': (10,), 'cam': (3,)} float32 over the split's records with a pose."""
    poses, betas = [], []
    with RecordReader(records_dir, split) as reader:
        for rec in reader:
            if rec['has_pose']:
                poses.append(rec['pose'])
            if rec['has_betas']:
                betas.append(rec['betas'])
    if not poses:
        raise ValueError(f'{records_dir} split {split!r}: no record has a pose to average')
    six_d = mean_of_rotvecs(np.asarray(poses, np.float64).reshape(len(poses), -1, 3))
    shape = np.mean(betas, axis=0) if betas else np.zeros(heads.NUM_BETAS)
    return {
        'pose': six_d.astype(np.float32),
        'shape': np.asarray(shape, np.float32)[: heads.NUM_BETAS],
        'cam': np.asarray(heads.DEFAULT_CAM, np.float32),
    }


def write(path: str, params: dict) -> None:
    """The npz, written atomically (a reader never sees half of it)."""
    atomic_write(path, lambda f: np.savez(f, **params))


def main(argv=None) -> str:
    ap = errors.ArgumentParser(description='Mean pose/shape/camera of a records split, as npz.')
    ap.add_argument('--records', required=True, help='a records dataset folder (shards.py)')
    ap.add_argument('--split', default='train')
    ap.add_argument('--out', required=True, help='e.g. <body_models>/smpl_mean_params.npz')
    args = ap.parse_args(argv)
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        ap.error(f'--out {args.out}: its folder does not exist')
    params = mean_params(args.records, args.split)
    write(args.out, params)
    print(f'{args.out}: {params["pose"].size // 6} joints, mean of {args.records} {args.split}')
    return args.out


if __name__ == '__main__':
    errors.guard(main)
