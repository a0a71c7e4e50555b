"""The preflight (extpose_jax/train/preflight.py) and the front door of run_train.py.

ViT-H configs are only ever estimated here (analytic: a trace of the init, no compile); the
compiled figures are checked on a tiny config over 8 simulated devices, where XLA's per-device
argument bytes must equal the sharded state and batch that the estimate adds up.
"""

import json
import os
import re
import subprocess
import sys
import time

import jax
import pytest

from configs import image, video
from extpose_jax.train import config as config_lib
from extpose_jax.train import devices as devices_lib
from extpose_jax.train import estimate, preflight

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE = jax.devices()[:1]
GIB = 2**30
# A GPU's memory model (remat and bf16 as written), whatever this machine is; its memory is
# then capped by config.preflight.memory_gb.
H100 = devices_lib.DeviceInfo.target('h100')


def _apply_flags(cfg, line: str):
    """Applies the '--config.a.b=v' flags named in a refusal to a copy of cfg."""
    out = cfg.copy_and_resolve_references()
    flags = re.findall(r'--config\.([\w.]+)=(\S+)', line)
    assert flags, line
    with out.unlocked():
        for dotted, value in flags:
            group, name = dotted.split('.')
            old = out[group][name]
            out[group][name] = (
                (value == 'True')
                if isinstance(old, bool)
                else type(old)(value)
                if old is not None
                else int(value)
            )
    return out


@pytest.mark.slow
def test_refuses_vit_h_video_on_a_small_device_naming_a_setting_that_fits():
    cfg = video.get_config()
    with cfg.unlocked():
        cfg.train.grad_accum = 1
        cfg.preflight.memory_gb = 40.0
    with pytest.raises(preflight.Refusal) as e:
        preflight.check(
            cfg, label='configs/video.py', devices=ONE, device=H100, compile='never', force=True
        )
    line = str(e.value)
    assert '\n' not in line and 'GiB' in line
    assert '--config.train.grad_accum=' in line, line
    fixed = _apply_flags(cfg, line)
    report = preflight.check(
        fixed, label='configs/video.py', devices=ONE, device=H100, compile='never', force=True
    )
    assert report.peak_bytes() <= report.usable_bytes
    assert report.grad_accum == fixed.train.grad_accum > 1


@pytest.mark.slow
def test_automatic_grad_accum_is_the_fewest_micro_batches_that_fit():
    cfg = video.get_config()
    with cfg.unlocked():
        cfg.preflight.memory_gb = 40.0
    report = preflight.check(cfg, devices=ONE, device=H100, compile='never', force=True)
    assert report.analytic['total'] <= report.usable_bytes
    fewer = config_lib.resolved(cfg, grad_accum=report.grad_accum // 2)
    with pytest.raises(preflight.Refusal):
        preflight.check(fewer, devices=ONE, device=H100, compile='never', force=True)
    assert report.config.data.batch_size == 32  # the global batch stays the paper's


@pytest.mark.slow
def test_too_small_for_anything_on_a_cpu_points_to_the_small_variant():
    cfg = video.get_config()
    with cfg.unlocked():
        cfg.preflight.memory_gb = 20.0
    with pytest.raises(preflight.Refusal, match=r'video.py:small'):
        preflight.check(cfg, label='configs/video.py', devices=ONE, compile='never', force=True)


def test_absurd_run_time_is_refused_unless_forced():
    cfg = image.get_config('small')
    with cfg.unlocked():
        cfg.preflight.max_run_hours = 1e-6
    with pytest.raises(preflight.Refusal, match=r'max_run_hours.*--force'):
        preflight.check(cfg, devices=ONE, compile='never')
    assert preflight.check(cfg, devices=ONE, compile='never', force=True).run_hours > 1e-6


def test_batch_that_does_not_split_over_the_mesh_names_the_field():
    cfg = image.get_config('small')
    with cfg.unlocked():
        cfg.data.batch_size = 3
        cfg.mesh.data = 2
    devices = [ONE[0], ONE[0]]  # the split is checked before any device is used
    with pytest.raises(preflight.Refusal, match=r'config\.(data\.batch_size|mesh)'):
        preflight.check(cfg, devices=devices, compile='never')


def test_flops_count_the_mask_exactly():
    """ExtPose at T frames: a token sees its stream's T frames and its frame's other modality."""
    d = estimate.Dims.of(video.get_config('small'))
    n = d.patches
    assert d.keys_per_query == d.frames * n + n
    img = estimate.Dims.of(image.get_config('small'))  # multimodal, T = 1: both streams
    assert img.keys_per_query == 2 * n
    fwd = estimate.forward_flops(d, 1)
    c, tokens = d.width, d.tokens_per_clip
    assert fwd['blocks'] == d.depth * tokens * (
        2 * (4 * c * c + 2 * c * d.mlp) + 4 * d.keys_per_query * c
    )


def test_cpu_memory_model_keeps_fp32_activations_of_every_block():
    """XLA:CPU undoes remat and computes bf16 in fp32 (measured); GPUs and TPUs do neither."""
    d = estimate.Dims.of(video.get_config())  # ViT-H, bf16, remat
    cpu = estimate.on_platform(d, 'cpu')
    assert estimate.on_platform(d, 'gpu') == d
    ratio = estimate.activation_bytes(cpu, 1) / estimate.activation_bytes(d, 1)
    assert ratio > 10  # 2 x (fp32 / bf16) x (32 blocks kept / ~3 kept with remat)


def test_target_devices_know_their_memory_and_peak():
    h100 = devices_lib.DeviceInfo.target('h100', 'bfloat16')
    assert h100.memory_bytes == 80 * GIB and h100.peak_flops == 989e12
    assert devices_lib.DeviceInfo.target('h100', 'float32').peak_flops == 989e12 / 2
    with pytest.raises(ValueError, match='known'):
        devices_lib.DeviceInfo.target('h900')


@pytest.mark.slow
def test_eight_simulated_devices_compile_a_tiny_config_and_agree_with_the_estimate(tmp_path):
    out = tmp_path / 'report.jsonl'
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            '-m',
            'extpose_jax.train.preflight',
            '--config=configs/video.py:small',
            '--devices=8',
            '--compile=always',
            f'--json={out}',
            '--config.data.batch_size=8',
            '--config.mesh.data=2',
            '--config.mesh.fsdp=4',
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seconds = time.perf_counter() - start
    row = json.loads(out.read_text().splitlines()[-1])
    assert row['num_devices'] == 8 and row['mesh'] == {'data': 2, 'fsdp': 4, 'tensor': 1}
    a, c = row['analytic'], row['compiled']
    # XLA's per-device arguments are the state shards plus the batch shard, which is what the
    # estimate adds up exactly (+ the step counter and the rng key: a few bytes).
    assert 0 <= c['argument'] - (a['params'] + a['optimizer'] + a['inputs']) < 64, (a, c)
    assert c['alias'] >= a['params'] + a['optimizer'] - 64  # the donated state is reused
    # The analytic total is an estimate: within a factor of two of XLA's on this config.
    assert 0.5 < a['total'] / c['total'] < 2.0, (a, c)
    # The eval step compiled too: the resident train state plus the forward's buffers.
    e = row['eval_compiled']
    assert e['resident_state'] == a['params'] + a['optimizer'] and e['total'] > e['resident_state']
    assert 'compiled (XLA)' in proc.stdout and 'FLOPs/step' in proc.stdout
    print(f'preflight on 8 simulated devices: {seconds:.1f} s')


@pytest.mark.slow
def test_front_door_refuses_the_paper_config_on_a_cpu_before_any_data(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, 'run_train.py'),
            f'--config={REPO}/configs/video.py',
            f'--config.data_dir={tmp_path}/data',
        ],
        cwd=tmp_path,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert 'video.py:small' in lines[0] and '--force' in lines[0]
    assert not (tmp_path / 'data').exists() and not (tmp_path / 'runs').exists()
    assert seconds < 180, seconds  # ~5 s alone; only a gross regression (data built first) fails
