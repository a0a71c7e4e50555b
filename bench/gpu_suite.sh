#!/usr/bin/env bash
# One prepared command for a machine with a GPU (CI never runs it; tests/test_gpu_suite.py runs
# its dry mode):
#
#     bash bench/gpu_suite.sh OUT_DIR                 # the GPU run, under 8 minutes
#     bash bench/gpu_suite.sh OUT_DIR --dry           # CPU only, ViT-tiny (or GPU_SUITE_DRY=1)
#     bash bench/gpu_suite.sh OUT_DIR --resume        # run what an earlier, cut-off run left
#
# What it measures, all bf16 with remat, every case in a fresh process (bench/train_step.py):
#   - the whole train step (skeleton rendering, ViT, head, SMPL, losses, AdamW) of ViT-H video
#     (T = 16, RGB + skeleton: 6,144 tokens, 'extpose' mask, 1 clip) and ViT-H image (T = 1,
#     RGB + skeleton, 16 clips, 'multimodal' mask), for the attention implementations
#     grouped_cudnn, cudnn, blockwise, dense, grouped, each where it applies: step time,
#     images/s, MFU from analytically counted model FLOPs (train/estimate.py) against the
#     device's dense bf16 peak (train/devices.py);
#   - the preflight's per-device memory predictions (analytic, and XLA's compiled figures)
#     beside the measured peak (memory_stats peak_bytes_in_use);
#   - the largest T that fits at 1 clip, for the fastest video implementation that ran:
#     bisected on the analytic estimate against the device's memory limit, then run.
# Cases run in priority order until a time budget (--budget, default 450 s) is spent; the rest
# are written as skipped. Compiling ViT-H takes minutes, so a first run may not reach them all:
# --resume runs only what OUT_DIR/suite.jsonl lacks. --only video|image|max_frames and
# --impls ... pick a subset.
#
# Output: OUT_DIR/suite.jsonl, one JSON object per line (also echoed), and each case's stderr in
# OUT_DIR/logs/. Lines, by "bench":
#   suite_start  dry, backend, budget_s, cases {video, image: config:size:T:clips}, impls,
#                dtype, remat, host, jax
#   train_step   case, attention, status: ok | not_applicable | oom | timeout | error |
#                skipped, reason (unless ok), wall_s (process start to end, compile included).
#                With ok, bench/train_step.py's fields: step_s (best of --runs after a warm-up),
#                steps_per_s, frames_per_s, images_per_s (T x modalities x clips / s),
#                model_tflops_per_step (analytic), mfu_model, peak_tflops, tflops_per_step
#                (XLA's count, which misses loop iterations), attention_resolved, params_m,
#                compiled_temp_gib, preflight_analytic_gib, preflight_compiled_gib,
#                peak_device_gib and device_limit_gib (GPU) or peak_rss_gib (CPU), device;
#                and measured_peak_gib, measured_is, analytic_over_measured,
#                compiled_over_measured.
#   max_frames   case, attention, device_limit_gib, usable_gib, predicted_max_frames,
#                predicted_gib_at_max, capped, tried {T: status}, max_frames_fit (the largest
#                T that ran, or null), step_s_at_max, measured_peak_gib_at_max
#   suite_end    wall_s, counts {status: n}
#
# --dry: JAX on the CPU, ViT-tiny (video T = 2, image T = 1 x 2 clips), 1 timed step, the T
# search capped at the video case's T = 2 (its run a compilation-cache hit), the tests' cheapest
# XLA:CPU compile (tests/run.sh); cuDNN cases are not_applicable. The same code path, so a GPU
# run does not fail on a typo. Each case still compiles a whole train step: ~30-50 s per case
# on a loaded 2-core CPU (all CPU-runnable cases: ~4 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: bash bench/gpu_suite.sh OUT_DIR [--dry] [--resume] [--budget S] [--only ...]" >&2
    exit 2
fi
out="$1"
shift
mkdir -p "$out"
# One compilation cache for the suite's processes: a --resume or a rerun skips recompiling.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$out/jax_cache}"
exec "${PYTHON:-python}" bench/gpu_suite.py "$out" "$@"
