#!/usr/bin/env bash
# The GPU half of the tests and benchmarks in one go, on a machine with a CUDA build of torch, Triton and nvcc:
#
#   1. builds the package with its CUDA kernels (`pip install --no-build-isolation --no-deps -e .`, for this
#      GPU's architecture unless TORCH_CUDA_ARCH_LIST says otherwise), running the natively compiled Triton
#      tests meanwhile (they need no extension);
#   2. the CUDA backend's tests and the model on the GPU against the reference ops;
#   3. the GPU benchmarks: STDP, LIF (fp32 and bf16, every shape and sweep), the model tiers.
#
# Each part runs under its own time limit and all of them under DEADLINE seconds (default 3600), so one slow
# part cannot starve the rest; each writes its log (and its benchmark JSON) into DIR as it finishes. The
# Triton LIF kernels take seconds to compile per dtype and option set (about 1.5 s forward, 5-7 s backward
# for sm_90), so a first run of the Triton tests (dozens of option sets) needs a few minutes even with 8
# workers; Triton's cache makes later runs fast.
# Turn the JSONs into BENCHMARKS.md's tables afterwards, on any machine:
#   python benchmarks/report.py DIR/lif_gpu.json; python benchmarks/bench_stdp.py DIR/stdp_gpu.json
#   python benchmarks/bench_model.py DIR/model_gpu.json
#
# Usage: bash benchmarks/gpu_suite.sh [--goals|--tune] [DIR]     (default DIR: gpu-results)
#   --goals: only what the goals need, the shortest run that checks them (no CUDA build), in this order:
#   LIF fwd+bwd at the goal shapes [128|256, 32, 131072] for the floor, bdh_triton and SpikingJelly in fp32
#   and bf16, the model tiers with their goal lines, the Triton no-recompile tests, and where the fixed
#   cost of a small bdh_triton call goes (benchmarks/profile_lif.py); about 10 minutes with a cold Triton
#   cache (DEADLINE=540 keeps it inside one 10-minute command, dropping the last parts if need be).
#   --tune: the triton LIF fwd+bwd in bf16 at [128, 32, 131072], spike and gated output, under each register
#   cap BDH_KERNELS_TRITON_MAXNREG in TUNE_MAXNREG (default: none, 128, 96, 80), to choose the kernels' default.
#   PYTHON (default python3), DEADLINE, BENCH_MAX_TIME (pytest-benchmark's --benchmark-max-time, default 0.3 s)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
goals=0 tune=0
if [[ "${1:-}" == "--goals" ]]; then goals=1; shift; fi
if [[ "${1:-}" == "--tune" ]]; then tune=1; shift; fi
out="${1:-gpu-results}"
mkdir -p "$out"
PYTHON="${PYTHON:-python3}"
DEADLINE="${DEADLINE:-3600}"
BENCH_MAX_TIME="${BENCH_MAX_TIME:-0.3}"
export PYTHONUNBUFFERED=1

log() { echo "[gpu_suite $(date -u +%H:%M:%S) +${SECONDS}s] $*"; }

# run NAME LIMIT CMD...: CMD under min(LIMIT, time left) seconds (SIGINT first, so pytest still writes its
# JSON and summary), output to DIR/NAME.log and to the terminal's tail
run() {
  local name="$1" limit="$2"; shift 2
  local left=$((DEADLINE - SECONDS))
  if ((left < 20)); then log "$name: SKIPPED, ${left}s left"; return 1; fi
  ((limit > left)) && limit=$left
  log "$name: start (limit ${limit}s)"
  timeout -s INT -k 20 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  log "$name: rc $rc"
  tail -n 25 "$out/$name.log"
  return $rc
}

"$PYTHON" - <<'EOF' | tee "$out/machine.txt"
import subprocess, torch
assert torch.cuda.is_available(), "no CUDA device: this script runs the GPU half only"
p = torch.cuda.get_device_properties(0)
print(f"{p.name}: {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor}")
import triton
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)
print(subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu",
                      "--format=csv"], capture_output=True, text=True).stdout)
EOF
[[ ${PIPESTATUS[0]} -eq 0 ]] || exit 1
arch="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

tests=(tests/test_lif_backends.py tests/test_stdp_backends.py tests/test_model.py)
xdist=()
"$PYTHON" -c "import xdist" 2>/dev/null && xdist=(-n 8)
bench=("$PYTHON" -m pytest --benchmark --benchmark-max-time="$BENCH_MAX_TIME" --benchmark-min-rounds=3 -q
       -p no:cacheprovider)

if ((tune)); then
  for output in spike gated; do
    for cap in ${TUNE_MAXNREG:-none 128 96 80}; do
      [[ "$cap" == none ]] && cap=""
      run "tune_${output}_maxnreg${cap:-none}" 150 env BDH_KERNELS_TRITON_MAXNREG="$cap" "$PYTHON" benchmarks/profile_lif.py \
        --backend triton --shape 128,32,131072 --dtype bfloat16 --device cuda --output "$output" --calls 10 --rows 4
    done
  done
  grep "ms per call" "$out"/tune_*.log
  log "done"
  exit 0
fi

if ((goals)); then
  # the goals' numbers first, so that a short DEADLINE (e.g. 540 for one 10-minute command) cuts the extras
  run bench_lif 240 "${bench[@]}" benchmarks/bench_lif.py --benchmark-json="$out/lif_gpu.json" \
    -k "gpu and bwd and (T128xB32xN131072 or T256xB32xN131072) and (floor_4_clones or bdh_triton or spikingjelly) or mode"
  run bench_model 160 "${bench[@]}" benchmarks/bench_model.py -k "tier or goals" --benchmark-json="$out/model_gpu.json"
  run tests_recompile 150 "$PYTHON" -m pytest "${tests[@]}" -k "triton and recompile" -q -rs
  run profile_lif 60 "$PYTHON" benchmarks/profile_lif.py --backend triton --shape 128,32,4096 --dtype bfloat16 \
    --device cuda
  log "done"
  exit 0
fi

log "build with TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS (background)"
(BDH_KERNELS_BUILD_CUDA=1 timeout 600 "$PYTHON" -m pip install --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1
 echo $? >"$out/build.rc") &
build=$!
run tests_triton 900 "$PYTHON" -m pytest "${tests[@]}" -k triton -q -rs "${xdist[@]}"
wait $build
log "build: rc $(cat "$out/build.rc")"
tail -n 5 "$out/build.log"
"$PYTHON" -c "import bdh_kernels; print('backends on cuda:', bdh_kernels.available_backends('cuda'))"

run tests_cuda 200 "$PYTHON" -m pytest "${tests[@]}" -k "cuda and not triton" -q -rs "${xdist[@]}"

run bench_stdp 100 "${bench[@]}" benchmarks/bench_stdp.py -k "gpu or goals" --benchmark-json="$out/stdp_gpu.json"
run bench_lif 220 "${bench[@]}" benchmarks/bench_lif.py -k "gpu or mode" --benchmark-json="$out/lif_gpu.json"
run bench_model 160 "${bench[@]}" benchmarks/bench_model.py -k "tier or goals" --benchmark-json="$out/model_gpu.json"
log "done"
