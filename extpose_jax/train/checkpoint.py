"""Checkpoints: a training run's orbax CheckpointManager, and standalone variables directories.

Training run (<workdir>/checkpoints/<step>/):
    state   TrainState (params, opt_state, constants, step), sharded, restored onto the mesh;
            with the adversarial prior an AdversarialTrainState (+ disc_params, disc_opt_state)
    data    the grain iterator's position, one JSON per process (shared filesystem multi-host)
    config  the run's ConfigDict as JSON
A checkpoint at step s holds the state after s updates and the iterator after s batches, so a
resumed run reproduces the uninterrupted one exactly (the step's rng is folded from state.step).

Variables directory (what convert.from_torch writes; what config.init.checkpoint reads):
    variables/   orbax PyTree {'params': ..., 'constants': ...[, 'discriminator': ...]}
    meta.json    where they came from ({'kind': 'smpl', 'source': ...})
written into a temporary sibling and renamed, so it exists only when complete.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from typing import Any, Optional, Tuple

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from data_pipelines.atomic_file import atomic_write
from extpose_jax import errors
from extpose_jax.models.discriminator import DISCRIMINATOR

_VARIABLES, _META = 'variables', 'meta.json'
ITEMS = ('state', 'data', 'config')
# A variables tree: the model's collections, plus optionally the discriminator's params tree
# (the Discriminator's 'params' collection, stored without that level, as convert.keymap has it).
_COLLECTIONS = ('params', 'constants', DISCRIMINATOR)


# ------------------------------------------------------------------------------ variables dirs


class VariablesError(errors.DataFileError):
    """A variables directory whose files are truncated, damaged or not what save_variables wrote."""


def save_variables(directory: str, variables: dict, meta: Optional[dict] = None) -> None:
    """Writes {'params', 'constants'[, 'discriminator']} (+ meta.json) atomically; an existing
    directory is an error. Without a discriminator the files are exactly as before it existed."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory):
        raise FileExistsError(f'save_variables: {directory} exists; remove it or choose another')
    unknown = set(variables) - set(_COLLECTIONS)
    if unknown or 'params' not in variables:
        raise ValueError(
            f"save_variables: expected {{'params', 'constants'[, '{DISCRIMINATOR}']}}, "
            f'got {sorted(variables)}'
        )
    tmp = f'{directory}.{secrets.token_hex(4)}.tmp'
    os.makedirs(tmp)
    try:
        tree = {'params': variables['params'], 'constants': variables.get('constants', {})}
        if variables.get(DISCRIMINATOR) is not None:
            tree[DISCRIMINATOR] = variables[DISCRIMINATOR]
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, _VARIABLES), jax.tree.map(np.asarray, tree))
        atomic_write(
            os.path.join(tmp, _META), lambda f: f.write(json.dumps(meta or {}, indent=1).encode())
        )
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_variables_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, _META)) and os.path.isdir(
        os.path.join(path, _VARIABLES)
    )


def load_variables(directory: str) -> Tuple[dict, dict]:
    """-> (variables of numpy arrays, meta); variables hold 'discriminator' when one was saved."""
    if not is_variables_dir(directory):
        raise FileNotFoundError(
            f'load_variables: {directory} is not a variables directory '
            f'(needs {_VARIABLES}/ and {_META})'
        )
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(os.path.join(os.path.abspath(directory), _VARIABLES))
    except Exception as e:  # noqa: BLE001 - orbax / tensorstore report damage as ValueError,
        # JSONDecodeError, UnicodeDecodeError, ...: any failure to read is the directory's
        reason = str(e).split(' [tensorstore_spec=')[0]  # the spec is a page of JSON
        raise VariablesError(
            f'{directory}: variables/ is unreadable (truncated or damaged?): '
            f'{type(e).__name__}: {errors.one_line(reason)}'
        ) from e
    if not isinstance(tree, dict) or not isinstance(tree.get('params'), dict):
        raise VariablesError(
            f"{directory}: variables/ holds no 'params' tree "
            f'(top level: {sorted(tree) if isinstance(tree, dict) else type(tree).__name__})'
        )
    tree = jax.tree.map(np.asarray, tree)
    variables = {'params': tree['params'], 'constants': tree.get('constants', {})}
    if DISCRIMINATOR in tree:
        variables[DISCRIMINATOR] = tree[DISCRIMINATOR]
    return variables, load_meta(directory)


def load_meta(directory: str) -> dict:
    path = os.path.join(directory, _META)
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise VariablesError(f'{path} is not valid JSON: {e}') from e
    if not isinstance(meta, dict):
        raise VariablesError(f'{path}: expected a JSON object, got {type(meta).__name__}')
    return meta


# ------------------------------------------------------------------------------ training runs


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), 'checkpoints')


class RunCheckpoints:
    """The run's CheckpointManager: save every `every` steps (+ forced saves), keep `keep`."""

    def __init__(self, workdir: str, every: int, keep: int, *, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every, max_to_keep=keep, read_only=read_only, create=not read_only
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether save(step) would save (interval or preemption), asked before the state is
        trusted enough to be written."""
        return self.manager.should_save(step)

    def save(self, step: int, state, data_iter, cfg, *, force: bool = False) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iter),
            config=ocp.args.JsonSave(cfg.to_dict()),
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, state_target, data_iter):
        """-> (state on the target shardings, the iterator positioned after `step` batches)."""
        got = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(state_target),
                data=grain.checkpoint.CheckpointRestore(data_iter),
            ),
        )
        return got.state, got.data

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any, shardings: Any = None):
    """ShapeDtypeStructs (with shardings) of a tree: a restore target that allocates nothing."""
    if shardings is None:
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
    )


def restore_variables(path: str, step: Optional[int] = None):
    """-> (variables of numpy arrays, config ConfigDict or None, step or None).

    `path` is a training workdir (its latest checkpoint, or `step`) or a variables directory.
    Only params and constants are read (and the discriminator's params, as variables
    ['discriminator'], when the run had one); the optimizer states stay on disk.
    """
    if is_variables_dir(path):
        variables, _ = load_variables(path)
        return variables, None, None
    if not os.path.isdir(checkpoint_dir(path)):
        raise FileNotFoundError(
            f'{path}: neither a training workdir (no checkpoints/) nor a '
            f'variables directory ({_VARIABLES}/ + {_META})'
        )
    manager = ocp.CheckpointManager(
        checkpoint_dir(path),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_handlers={
            'state': ocp.PyTreeCheckpointHandler(),
            'config': ocp.JsonCheckpointHandler(),
        },
    )
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(
            f'{checkpoint_dir(path)}: no checkpoint at step {step} '
            f'(have {sorted(manager.all_steps())})'
        )
    meta = manager.item_metadata(step)['state']
    wanted = {k: meta[k] for k in ('params', 'constants', 'disc_params') if k in meta}
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), wanted)
    got = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=target,
                partial_restore=True,
                restore_args=jax.tree.map(
                    lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target
                ),
            ),
            config=ocp.args.JsonRestore(),
        ),
    )
    manager.close()
    # TrainState.constants holds the non-param collections by name ({'constants': {...}}).
    variables = {'params': got.state['params'], **got.state.get('constants', {})}
    if 'disc_params' in got.state:  # an AdversarialTrainState
        variables[DISCRIMINATOR] = got.state['disc_params']
    return variables, ml_collections.ConfigDict(got.config), step
