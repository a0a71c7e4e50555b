"""Evaluates exported ExtPose weights in PyTorch: the mirror model and smplx's SMPL / MANO layers.

    python eval_torch.py --config=configs/video.py:small --ckpt=extpose.ckpt --workdir=DIR
        [--evaluator=NAME] [--split=S] [--max_frames=N] [--pose_source=S]

--ckpt is what `python -m extpose_jax.convert.to_torch` writes (or any HMR 2.0 / HaMeR checkpoint
whose backbone.* and smpl_head.* / mano_head.* keys fit the config's model). The records split,
windows, 2D-pose input and metrics are run_eval.py's: train/evaluate.py iterates the data and
train/eval_protocols.py scores it; only the model (convert/torch_model.py) and the body-model
forward (smplx here, JAX there) are swapped, so the two print the same metrics for the same
weights, and any difference is the frameworks'. The other flags are run_eval.py's; the
metrics are printed and written to DIR/eval_torch/<evaluator>/<split>/metrics.json (run_eval.py
writes DIR/eval/...), so --workdir is the run the weights were exported from, or any directory.
"""

import os

import numpy as np
import smplx
import torch
from absl import app, flags
from smplx.lbs import batch_rodrigues
from smplx.utils import Struct

import run_eval  # its flags (--config, --split, --max_frames, --pose_source) and run_train's data
from extpose_jax import body_models, skeletons
from extpose_jax.convert import from_torch, torch_model
from extpose_jax.models import extpose
from extpose_jax.train import config as config_lib
from extpose_jax.train import evaluate
from extpose_jax.train import task as task_lib

flags.DEFINE_string('ckpt', None, 'Exported PyTorch checkpoint (convert.to_torch output).')
FLAGS = flags.FLAGS

FOCAL_LENGTH, CROP_SIZE = 5000.0, 256.0  # HMR 2.0 / HaMeR's crop camera


class SmplxBodies:
    """evaluate.evaluate's `bodies`, with smplx: the neutral SMPL (HMR 2.0's 44 keypoints: smplx's
    joints through the OpenPose-25 map + the J19 regressor) or the right MANO (16 joints + 5 tip
    vertices, OpenPose order) for predictions; the gendered SMPL / right MANO for ground truth.
    The model files are read without chumpy by body_models.load_model_file; smplx does the math."""

    def __init__(self, kind: str, body_models_dir: str):
        self.kind, self.dir = kind, body_models_dir
        self._layers = {}
        self.neutral = self._layer('neutral')
        self.faces = np.asarray(self.neutral.faces, np.int64)
        if kind == 'smpl':
            j19 = body_models.find_model_file(body_models_dir, 'SMPL_to_J19')
            self.j19 = torch.from_numpy(body_models.load_j19_regressor(j19)).float()

    def _layer(self, gender: str):
        if gender not in self._layers:
            name = f'SMPL_{gender.upper()}' if self.kind == 'smpl' else 'MANO_RIGHT'
            path = body_models.find_model_file(self.dir, name)
            struct = Struct(**body_models.load_model_file(path))
            if self.kind == 'smpl':
                layer = smplx.SMPLLayer(model_path=path, data_struct=struct, num_betas=10)
            else:
                layer = smplx.MANOLayer(
                    model_path=path, data_struct=struct, is_rhand=True, use_pca=False, num_betas=10
                )
            self._layers[gender] = layer.eval()
        return self._layers[gender]

    def _forward(self, layer, rotmats, betas):
        """rotmats (N, J, 3, 3), betas (N, 10) numpy -> (vertices, keypoints) numpy."""
        rotmats, betas = (
            torch.from_numpy(np.asarray(rotmats, np.float32)),
            torch.from_numpy(np.asarray(betas, np.float32)),
        )
        rest = {'body_pose' if self.kind == 'smpl' else 'hand_pose': rotmats[:, 1:]}
        with torch.no_grad():
            out = layer(global_orient=rotmats[:, :1], betas=betas, **rest)
            if self.kind == 'smpl':
                kp = torch.cat(
                    [
                        out.joints[:, list(skeletons.SMPL_TO_OPENPOSE25)],
                        torch.einsum('ev,nvk->nek', self.j19, out.vertices),
                    ],
                    dim=1,
                )
            else:
                tips = out.vertices[:, list(body_models.MANO_TIP_VERTICES)]
                kp = torch.cat([out.joints, tips], dim=1)[:, list(skeletons.MANO_TO_OPENPOSE21)]
        return out.vertices.numpy(), kp.numpy()

    def predicted(self, outputs: dict) -> dict:
        rest = outputs['body_pose'] if self.kind == 'smpl' else outputs['hand_pose']
        rotmats = np.concatenate([outputs['global_orient'], rest], axis=-3)
        lead = rotmats.shape[:-3]
        verts, kp = self._forward(
            self.neutral,
            rotmats.reshape(-1, *rotmats.shape[-3:]),
            outputs['betas'].reshape(-1, outputs['betas'].shape[-1]),
        )
        s, tx, ty = np.moveaxis(np.asarray(outputs['pred_cam'], np.float32), -1, 0)
        cam_t = np.stack([tx, ty, 2 * FOCAL_LENGTH / (CROP_SIZE * s + 1e-9)], axis=-1)
        return {
            'keypoints_3d': kp.reshape(lead + kp.shape[1:]),
            'vertices': verts.reshape(lead + verts.shape[1:]),
            'cam_t': cam_t,
        }

    def ground_truth(self, pose, betas, genders=None) -> dict:
        lead = pose.shape[:-1]
        pose, betas = pose.reshape(-1, pose.shape[-1]), betas.reshape(-1, betas.shape[-1])
        rotmats = batch_rodrigues(torch.from_numpy(np.asarray(pose, np.float32)).reshape(-1, 3))
        rotmats = rotmats.reshape(len(pose), -1, 3, 3).numpy()
        if self.kind == 'mano':
            verts, kp = self._forward(self._layer('neutral'), rotmats, betas)
            return {
                'vertices': verts.reshape(lead + verts.shape[1:]),
                'keypoints': kp.reshape(lead + kp.shape[1:]),
            }
        genders = np.asarray(genders if genders is not None else [], object).reshape(-1)
        if not (genders != '').any():
            raise ValueError("ground_truth: SMPL needs each frame's gender, none given")
        result = {}
        for gender in sorted(set(genders) - {''}):
            pick = genders == gender
            verts, kp = self._forward(self._layer(gender), rotmats[pick], betas[pick])
            for key, value in (('vertices', verts), ('keypoints', kp)):
                result.setdefault(key, np.zeros((len(pose),) + value.shape[1:], np.float32))[
                    pick
                ] = value
        return {k: v.reshape(lead + v.shape[1:]) for k, v in result.items()}


def make_predict_fn(cfg, state_dict):
    """The mirror of config.model with `state_dict` loaded -> predict_fn(batch) for evaluate()."""
    task = task_lib.Task(cfg)
    if not isinstance(task.model, extpose.ExtPose):
        raise ValueError(
            f'config.model.arch={cfg.model.arch!r} adds parameters HMR 2.0 / HaMeR do not '
            'have; the PyTorch mirror runs ExtPose and its config variants only'
        )
    mirror = torch_model.TorchExtPose(task.model.config).load(state_dict).eval()

    def predict_fn(batch):
        frames, kp = (np.asarray(x) for x in task.inputs(batch))
        with torch.no_grad():
            out = mirror(frames, kp, frame_valid=np.asarray(batch['frame_valid']))
        return {k: v[:, :, 0].numpy() for k, v in out.items()}  # one view

    return predict_fn


def run(
    cfg, ckpt: str, *, evaluator=None, split=None, max_frames=None, pose_source=None, log=print
) -> dict:
    """Evaluates the checkpoint on one of cfg.evaluators (default: the first) with PyTorch;
    returns the metrics."""
    state_dict = from_torch.state_dict_of(from_torch.read_torch_file(ckpt), ckpt)
    cfg = config_lib.resolved(cfg)  # eval.batch_size None: the config's default rule
    ev = config_lib.evaluator(cfg, evaluator)
    body_models_dir, records_root = run_eval.run_train.prepare_data(cfg)
    split = split or ev.split
    metrics = evaluate.evaluate(
        make_predict_fn(cfg, state_dict),
        records_dir=os.path.join(records_root, ev.dataset),
        split=split,
        batch_size=cfg.eval.batch_size,
        bodies=SmplxBodies(cfg.model.kind, body_models_dir),
        **config_lib.eval_kwargs(cfg, ev, max_frames=max_frames, pose_source=pose_source),
    )
    log(f'{ev.name}: {ev.dataset}/{split}, PyTorch + smplx ({ckpt}):')
    for key, value in metrics.items():
        log(f'  {key}: {value:.3f}' if isinstance(value, float) else f'  {key}: {value}')
    return metrics


def main(argv):
    del argv
    cfg = run_eval.run_train.CONFIG.value
    config_lib.validate(cfg)
    if not FLAGS.ckpt or not FLAGS.workdir:
        raise app.UsageError('--ckpt and --workdir are required')
    ev = config_lib.evaluator(cfg, FLAGS.evaluator)
    metrics = run(
        cfg,
        FLAGS.ckpt,
        evaluator=ev.name,
        split=FLAGS.split,
        max_frames=FLAGS.max_frames,
        pose_source=FLAGS.pose_source,
    )
    split = FLAGS.split or ev.split
    evaluate.write_metrics_json(
        os.path.join(FLAGS.workdir, 'eval_torch', ev.name, split, 'metrics.json'), metrics
    )


if __name__ == '__main__':
    from extpose_jax import errors

    errors.run(main)
