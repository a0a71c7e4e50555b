"""HMR 2.0 / HaMeR pose-and-shape discriminator (upstream discriminator.py) in Flax linen.

Input: rotation matrices (B, J, 3, 3) of the body pose (SMPL, J = 23, no global orient) or hand
pose (MANO, J = 15), and betas (B, 10). Output (B, J + 2) = [J per-joint scores | 1 betas score |
1 all-joints score]; any leading dims are accepted ((..., J, 3, 3) -> (..., J + 2)).

Computation (PyTorch layout in brackets):
  x = rotmats flattened row-major to 9 channels per joint      [(B, J, 3, 3) -> (B, 9, J, 1)]
  x = relu(D_conv1(x)); x = relu(D_conv2(x))                   [1x1 convs 9 -> 32 -> 32]
  pose_j = pose_out_j(x[:, joint j])                           [Linear(32, 1), one per joint]
  b = betas_out(relu(betas_fc2(relu(betas_fc1(betas)))))      [10 -> 10 -> 5 -> 1]
  a = D_alljoints_out(relu(fc2(relu(fc1(flat(x))))))           [32 J -> 1024 -> 1024 -> 1]
  out = concat(pose_1..J, b, a)
flat(x) flattens the PyTorch (B, 32, J, 1) tensor, i.e. CHANNEL-major: feature index c * J + j.
This fixes D_alljoints_fc1's input ordering and therefore the weight conversion.

UNVERIFIED (not checked against upstream's file): the activations. We use ReLU after each 1x1 conv
and after every hidden fc layer (none after the score outputs), as in the HMR-family
discriminators; the channel-major flatten above is the natural PyTorch `reshape(B, -1)` of the
conv output and is likewise unverified against the upstream file.

Parameter tree (one leaf per PyTorch key; `discriminator_key_map` lists the pairs; torch keys drop
the 'discriminator.' prefix):
  params/D_conv1/{kernel (9, 32), bias (32)}           D_conv1.{weight (32, 9, 1, 1), bias}
  params/D_conv2/{kernel (32, 32), bias (32)}          D_conv2.{weight (32, 32, 1, 1), bias}
  params/pose_out_{j}/{kernel (32, 1), bias (1)}       pose_out.{j}.{weight (1, 32), bias}
  params/betas_fc1/{kernel (10, 10), bias}             betas_fc1.*
  params/betas_fc2/{kernel (10, 5), bias}              betas_fc2.*
  params/betas_out/{kernel (5, 1), bias}               betas_out.*
  params/D_alljoints_fc1/{kernel (32 J, 1024), bias}   D_alljoints_fc1.*
  params/D_alljoints_fc2/{kernel (1024, 1024), bias}   D_alljoints_fc2.*
  params/D_alljoints_out/{kernel (1024, 1), bias}      D_alljoints_out.*
Conversion choice for the 1x1 convs: a Dense kernel (I, O) = weight[:, :, 0, 0].T
(squeeze + transpose); every Linear is the usual kernel = weight.T. Biases are copied.

Logical axis names (all tiny: map them to None, i.e. replicate, in the rules table):
  'disc_rot' 9 (rotation entries), 'disc_conv_in' / 'disc_conv' 32 (conv channels in / out),
  'disc_score' 1 (score outputs), 'betas' 10, 'disc_betas_hidden' 10 / 5 (betas fc outputs),
  'disc_flat' 32 J (all-joints input), 'disc_mlp_in' / 'disc_mlp' 1024.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from extpose_jax.models.heads import _torch_uniform

NUM_JOINTS = {'smpl': 23, 'mano': 15}
NUM_BETAS = 10
CONV_CH = 32
MLP = 1024
# Where its params live beside an ExtPose model's {'params', 'constants'}: in a checkpoint's
# variables, and in the variables the loss sees.
DISCRIMINATOR = 'discriminator'


def num_joints(kind: str) -> int:
    if kind not in NUM_JOINTS:
        raise ValueError(
            f'unknown discriminator kind {kind!r}; expected one of {sorted(NUM_JOINTS)}'
        )
    return NUM_JOINTS[kind]


class Discriminator(nn.Module):
    """LSGAN discriminator on (rotmats (..., J, 3, 3), betas (..., 10)) -> scores (..., J + 2)."""

    kind: str = 'smpl'
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    def _dense(self, features, fan_in, axes, name):
        return nn.Dense(
            features,
            name=name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=nn.with_logical_partitioning(_torch_uniform(fan_in), axes),
            bias_init=nn.with_logical_partitioning(_torch_uniform(fan_in), axes[-1:]),
        )

    @nn.compact
    def __call__(self, rotmats, betas):
        j = num_joints(self.kind)
        if rotmats.shape[-3:] != (j, 3, 3):
            raise ValueError(
                f'{self.kind} discriminator: rotmats must be (..., {j}, 3, 3), got {rotmats.shape}'
            )
        if betas.shape[-1] != NUM_BETAS:
            raise ValueError(f'discriminator: betas must be (..., {NUM_BETAS}), got {betas.shape}')
        lead = rotmats.shape[:-3]
        if betas.shape[:-1] != lead:
            raise ValueError(
                f'discriminator: leading dims differ: rotmats {rotmats.shape}, betas {betas.shape}'
            )
        x = rotmats.reshape(lead + (j, 9))  # (..., J, 9): channels last
        x = nn.relu(self._dense(CONV_CH, 9, ('disc_rot', 'disc_conv'), 'D_conv1')(x))
        x = nn.relu(self._dense(CONV_CH, CONV_CH, ('disc_conv_in', 'disc_conv'), 'D_conv2')(x))
        pose_scores = [
            self._dense(1, CONV_CH, ('disc_conv', 'disc_score'), f'pose_out_{i}')(x[..., i, :])
            for i in range(j)
        ]
        b = nn.relu(self._dense(10, NUM_BETAS, ('betas', 'disc_betas_hidden'), 'betas_fc1')(betas))
        b = nn.relu(self._dense(5, 10, ('disc_betas_hidden', 'disc_betas_hidden'), 'betas_fc2')(b))
        b = self._dense(1, 5, ('disc_betas_hidden', 'disc_score'), 'betas_out')(b)
        flat = jnp.swapaxes(x, -1, -2).reshape(lead + (CONV_CH * j,))  # channel-major c * J + j
        a = nn.relu(
            self._dense(MLP, CONV_CH * j, ('disc_flat', 'disc_mlp'), 'D_alljoints_fc1')(flat)
        )
        a = nn.relu(self._dense(MLP, MLP, ('disc_mlp_in', 'disc_mlp'), 'D_alljoints_fc2')(a))
        a = self._dense(1, MLP, ('disc_mlp', 'disc_score'), 'D_alljoints_out')(a)
        return jnp.concatenate(pose_scores + [b, a], axis=-1)


# ------------------------------------------------------------------------------ conversion


def discriminator_key_map(
    kind: str,
) -> Tuple[Tuple[str, Tuple[str, ...], Tuple[int, ...], Tuple[int, ...], str], ...]:
    """(torch key without 'discriminator.', Flax path under params, torch shape, Flax shape, rule).

    rule: 'conv1x1' (weight[:, :, 0, 0].T), 'linear' (weight.T) or 'copy'. Order = the PyTorch
    registration order (convs, pose_out.*, betas_*, D_alljoints_*).
    """
    j = num_joints(kind)
    linears = [
        ('D_conv1', 'D_conv1', 9, CONV_CH, 'conv1x1'),
        ('D_conv2', 'D_conv2', CONV_CH, CONV_CH, 'conv1x1'),
    ]
    linears += [(f'pose_out.{i}', f'pose_out_{i}', CONV_CH, 1, 'linear') for i in range(j)]
    linears += [
        ('betas_fc1', 'betas_fc1', 10, 10, 'linear'),
        ('betas_fc2', 'betas_fc2', 10, 5, 'linear'),
        ('betas_out', 'betas_out', 5, 1, 'linear'),
        ('D_alljoints_fc1', 'D_alljoints_fc1', CONV_CH * j, MLP, 'linear'),
        ('D_alljoints_fc2', 'D_alljoints_fc2', MLP, MLP, 'linear'),
        ('D_alljoints_out', 'D_alljoints_out', MLP, 1, 'linear'),
    ]
    out = []
    for tkey, fname, fin, fout, rule in linears:
        wshape = (fout, fin, 1, 1) if rule == 'conv1x1' else (fout, fin)
        out.append((f'{tkey}.weight', (fname, 'kernel'), wshape, (fin, fout), rule))
        out.append((f'{tkey}.bias', (fname, 'bias'), (fout,), (fout,), 'copy'))
    return tuple(out)


def _check_keys(given, expected, what):
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise KeyError(f'{what}: missing keys {missing}, unexpected keys {unexpected}')


def from_torch_state_dict(state: Dict[str, Any], kind: str, prefix: str = '') -> dict:
    """PyTorch discriminator state dict (numpy / torch tensors) -> {'params': ...} Flax tree.

    `prefix`, e.g. 'discriminator.', is stripped; keys outside it are ignored. Fails on missing,
    unexpected or mis-shaped keys.
    """
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    kmap = discriminator_key_map(kind)
    _check_keys(sub, [m[0] for m in kmap], 'discriminator from torch')
    params: Dict[str, Dict[str, np.ndarray]] = {}
    bad = []
    for tkey, (mod, leaf), tshape, fshape, rule in kmap:
        w = np.asarray(
            sub[tkey].detach().cpu().numpy() if hasattr(sub[tkey], 'detach') else sub[tkey]
        )
        if tuple(w.shape) != tshape:
            bad.append(f'{tkey}: {tuple(w.shape)} != {tshape}')
            continue
        if rule == 'conv1x1':
            w = w[:, :, 0, 0].T
        elif rule == 'linear':
            w = w.T
        params.setdefault(mod, {})[leaf] = np.ascontiguousarray(w)
    if bad:
        raise ValueError('discriminator from torch: mis-shaped keys: ' + '; '.join(bad))
    return {'params': params}


def to_torch_state_dict(variables: dict, kind: str, prefix: str = '') -> Dict[str, np.ndarray]:
    """Inverse of `from_torch_state_dict` (numpy arrays; exact round trip)."""
    params = nn.unbox(variables.get('params', variables))
    kmap = discriminator_key_map(kind)
    _check_keys(
        [f'{m}/{l}' for m, leaves in params.items() for l in leaves],
        [f'{p[0]}/{p[1]}' for _, p, _, _, _ in kmap],
        'discriminator to torch',
    )
    out = {}
    for tkey, (mod, leaf), tshape, fshape, rule in kmap:
        w = np.asarray(jax.device_get(params[mod][leaf]))
        if tuple(w.shape) != fshape:
            raise ValueError(f'discriminator to torch: {mod}/{leaf}: {w.shape} != {fshape}')
        if rule == 'conv1x1':
            w = w.T[:, :, None, None]
        elif rule == 'linear':
            w = w.T
        out[prefix + tkey] = np.ascontiguousarray(w)
    return out
