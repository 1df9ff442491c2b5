#!/usr/bin/env bash
# On one GPU machine (prepared for an H200), from the repository's root:
#
#     bash benchmarks/gpu_check.sh [OUT] [STEPS]   # OUT: where logs and results go (default /tmp/gpu)
#
# STEPS: the steps to run, default "1 2 3" (within 10 minutes); "4" alone takes about 5.
# 1. the tests that need CUDA (tests/test_cuda.py; CI skips them);
# 2. training throughput on the GPU against one CPU core, side by side, packs of K points
#    (benchmarks/throughput.py; point-epochs per second and the ratio);
# 3. if Ray imports: fractional GPUs (four packs on the GPU, --gpus-per-trial 0.25) on the smoke
#    grid, then the full Figure 6 grid (fig6_rnn.yaml, 10,000 points) at the paper protocol,
#    timed, and its limits table;
# 4. the newer cells, as step 2 does it, one network of l = 1, c = 5 each: minLSTM, the LRU, the
#    selective SSM bare and in Mamba's block (on the CPU on their C kernel), and the cells whose
#    only path on the CPU is their definition under autograd (the blocks of minGRU and the LRU,
#    Mamba on complex S4D-Lin).
# Each step prints what it measured; a step that cannot run says why and the next one runs.
# memgrid imports torch, pyarrow, pandas, matplotlib, click, pyyaml, and (for step 3) ray;
# carry what the machine lacks as wheels.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/gpu}
STEPS=" ${2:-1 2 3} "
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
say() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }
step() { [[ $STEPS == *" $1 "* ]]; }

# throughput.py on the GPU (--k GPU_K) and on one CPU core (--k CPU_K) for NETS, and the ratios
gpu_against_cpu() {
    local name=$1 gpu_k=$2 cpu_k=$3 gpu_s=$4 cpu_s=$5; shift 5
    timeout "$gpu_s" $PY benchmarks/throughput.py "$@" --device cuda --k $gpu_k 2>&1 | tee "$OUT/${name}_gpu.log"
    timeout "$cpu_s" $PY benchmarks/throughput.py "$@" --k $cpu_k 2>&1 | tee "$OUT/${name}_cpu.log"
    $PY - "$OUT/${name}_gpu.log" "$OUT/${name}_cpu.log" <<'PY'
import re, sys
def best(path):
    """net -> its best point-epochs per second over K (throughput.py's lines: 'rnn 1,5 (best_k
    200): K=8:   46760  K=16:   57040  pe/s')"""
    out = {}
    for line in open(path):
        m = re.match(r"(\w+) (\d+,\d+) ", line)
        rates = [float(v) for v in re.findall(r"K=\d+:\s+([\d.]+)", line)]
        if m and rates:
            out[f"{m.group(1)} {m.group(2)}"] = max(rates)
    return out
g, c = best(sys.argv[1]), best(sys.argv[2])
for net in g:
    if net in c and c[net] > 0:
        print(f"{net}: GPU {g[net]:,.0f} / one CPU core {c[net]:,.0f} point-epochs/s = {g[net] / c[net]:.1f}x")
PY
}

say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

if step 1; then
    say "1. CUDA tests"
    timeout 240 $PY -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log" | tail -n 15
fi

if step 2; then
    say "2. throughput: GPU (K up to 4096) against one CPU core (K 64)"
    gpu_against_cpu throughput "256 1024 4096" 64 150 90 rnn,1,5 rnn,5,20 lstm,3,10 mingru,2,10
fi

if step 3; then
    say "3. Ray on the GPU"
    if ! $PY -c "import ray" 2>/dev/null; then
        echo "ray does not import here: steps 3a and 3b skipped (carry ray[tune] as wheels)"
    else
        MEMGRID="$PY -m memgrid.cli"
        say "3a. fractional GPUs: the smoke grid, four packs on the GPU"
        timeout 120 $MEMGRID run tune_configs/smoke.yaml --gpus-per-trial 0.25 --pack 6 --out "$OUT/smoke" 2>&1 | tail -n 3
        say "3b. the full Figure 6 grid at the paper protocol"
        start=$(date +%s)
        timeout 330 $MEMGRID run tune_configs/fig6_rnn.yaml --protocol paper --gpus-per-trial 0.25 --out "$OUT/fig6_rnn-paper" 2>&1 | tail -n 3
        echo "fig6_rnn: $(( $(date +%s) - start )) s wall"
        $MEMGRID status "$OUT/fig6_rnn-paper" 2>&1 | head -n 5
    fi
fi

if step 4; then
    say "4. the newer cells: GPU (K up to 4096) against one CPU core (K 32)"
    gpu_against_cpu cells "256 1024 4096" 32 200 100 rnn,1,5 minlstm,1,5 lru,1,5 s6_bare,1,5 \
        mamba,1,5 mingru_block,1,5 lru_block,1,5 mamba_complex,1,5
fi
