"""Evaluates a training checkpoint: python run_eval.py --config=configs/video.py:small [--workdir=DIR].

    --step=N            that checkpoint (default: the latest)
    --checkpoint=PATH   evaluate another training workdir, or a variables directory (e.g.
                        converted PyTorch weights); results still go under --workdir
    --evaluator=NAME    one of config.evaluators (default: the config's first)
    --split=S           another split of its dataset (default: the evaluator's split)
    --max_frames=N      score only the first N frames (default: the evaluator's max_frames)
    --overlays=N        overlay PNGs (default: config.eval.overlays)
    --pose_source=S     2D-pose input: detections | noisy_gt | gt (default: the evaluator's
                        pose_source, else its protocol's: the records' detections, for the
                        hand datasets those of the converter's detections file; metrics.json
                        says which was used)

Writes <workdir>/eval/<evaluator>/step_<N>/metrics.json and overlays/ beside it, the same files
the training loop writes for that step, and <workdir>/eval/<evaluator>/metrics.json ({'step': N,
...}); another split goes to <workdir>/eval/<evaluator>/<split>_step_<N>/ only, a variables
directory (no step) to <workdir>/eval/<evaluator>/variables/ (<split>_variables/). Prints the metrics. The data are the
config's (or the synthetic default, as run_train.py builds it).

Evaluation runs as in training: under config.mesh, the model sharded by the same rules, every
process scoring its share of the windows (run_train.py's --coordinator / --num_processes /
--process_id / --distributed start several); process 0 writes the files.
"""

import os

from absl import flags

import run_train  # its --config / --workdir flags and prepare_data(): one definition of each

flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
flags.DEFINE_string(
    'checkpoint', None, 'Training workdir or variables directory to evaluate (default: --workdir).'
)
flags.DEFINE_string('evaluator', None, 'Name in config.evaluators (default: the first).')
flags.DEFINE_string('split', None, "Split of the evaluator's dataset (default: its split).")
flags.DEFINE_integer(
    'max_frames', None, "Score only the first N frames (default: the evaluator's max_frames)."
)
flags.DEFINE_integer('overlays', None, 'Overlay images to write (default: config.eval.overlays).')
flags.DEFINE_string('pose_source', None, "2D-pose input (default: the evaluator's).")
FLAGS = flags.FLAGS


def _model_differences(cfg, saved) -> list:
    if saved is None:
        return []
    ours = cfg.model.to_dict()
    theirs = saved.model.to_dict() if 'model' in saved else {}
    return sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))


def run(
    cfg,
    workdir: str,
    *,
    evaluator=None,
    checkpoint_path=None,
    step=None,
    split=None,
    max_frames=None,
    overlays=None,
    pose_source=None,
    log=print,
) -> dict:
    """Restores the checkpoint, evaluates, writes the files; returns {'step', 'out_dir', 'metrics'}."""
    import jax

    from extpose_jax.train import checkpoint, evaluate
    from extpose_jax.train import config as config_lib
    from extpose_jax.train import sharding as shd
    from extpose_jax.train import task as task_lib

    cfg = config_lib.resolved(cfg)  # the automatic fields (eval.batch_size None, ...) set
    ev = config_lib.evaluator(cfg, evaluator)
    mesh = shd.make_mesh({a: cfg.mesh[a] for a in ('data', 'fsdp', 'tensor')})
    source = checkpoint_path or workdir
    # Host numpy, the whole checkpoint on every process, of which each keeps its shards: fine at
    # the sizes evaluated so far; a restore straight onto the shardings would read only those.
    variables, saved_cfg, step = checkpoint.restore_variables(source, step=step)
    differ = _model_differences(cfg, saved_cfg)
    if differ:
        log(f"note: config.model differs from the checkpoint's in {differ}")
    task = task_lib.Task(cfg)
    variables, shardings = task.place_variables(variables, mesh, source=source)
    body_models_dir, records_root = run_train.prepare_data(cfg)
    split = split or ev.split
    tag = 'variables' if step is None else f'step_{step}'
    tag = tag if split == ev.split else f'{split}_{tag}'
    out_dir = os.path.join(workdir, 'eval', ev.name, tag)
    metrics = evaluate.evaluate(
        task_lib.make_sharded_predict_fn(cfg, variables, shardings, mesh, task),
        records_dir=os.path.join(records_root, ev.dataset),
        split=split,
        body_models_dir=body_models_dir,
        batch_size=task_lib.eval_batch_size(cfg.eval.batch_size, mesh, log),
        overlays=cfg.eval.overlays if overlays is None else overlays,
        overlay_dir=os.path.join(out_dir, 'overlays'),
        log=log,
        **config_lib.eval_kwargs(cfg, ev, max_frames=max_frames, pose_source=pose_source),
    )
    if jax.process_index() == 0:
        evaluate.write_metrics_json(os.path.join(out_dir, 'metrics.json'), metrics)
        if split == ev.split and step is not None:  # the latest training evaluation
            evaluate.write_metrics_json(
                os.path.join(workdir, 'eval', ev.name, 'metrics.json'), {'step': step, **metrics}
            )
        log(f'{ev.name}: {ev.dataset}/{split}, {tag} ({out_dir}):')
        for key, value in metrics.items():
            log(f'  {key}: {value:.3f}' if isinstance(value, float) else f'  {key}: {value}')
    return {'step': step, 'out_dir': out_dir, 'metrics': metrics}


def main(argv):
    del argv
    if FLAGS.checkpoint and not os.path.exists(FLAGS.checkpoint):  # before the model is built
        raise FileNotFoundError(f'--checkpoint={FLAGS.checkpoint}: no such file or directory')
    from extpose_jax.train import config as config_lib

    cfg = run_train.CONFIG.value
    config_lib.validate(cfg)
    run_train.init_distributed()
    workdir = FLAGS.workdir or run_train.default_workdir(run_train.config_label())
    run(
        cfg,
        workdir,
        evaluator=FLAGS.evaluator,
        checkpoint_path=FLAGS.checkpoint,
        step=FLAGS.step,
        split=FLAGS.split,
        max_frames=FLAGS.max_frames,
        overlays=FLAGS.overlays,
        pose_source=FLAGS.pose_source,
    )


if __name__ == '__main__':
    from extpose_jax import errors

    errors.run(main)
