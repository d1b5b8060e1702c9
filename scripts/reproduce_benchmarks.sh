#!/usr/bin/env bash
# Every figure in BENCHMARKS.md. Run on a quiet machine (nothing else on the CPU), after `make venv`.
# About 75 minutes on 2 CPU cores and 24 GiB. Results land in results/ (JSON, markdown, plots).
# Run one step: scripts/reproduce_benchmarks.sh 3 7   (step numbers as below; default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
mkdir -p results/plots
want() { [ $# -eq 0 ] || [[ " $WANT " == *" $1 "* ]]; }
WANT="${*:-}"
step() { echo; echo "== $* =="; }
run() { if [ -z "$WANT" ] || want "$1"; then shift; "$@"; fi; }

step "1. SDXL block: the issue-2 table and the sub-layer defaults (~4 min)"
run 1 python scripts/bench_block.py --repeats 10 --warmup 2 --json results/bench_block.json --markdown results/bench_block.md

step "2. SDXL block: methods x ratios, eager (~3 min)"
run 2 toma-export bench --workload sdxl-block --methods none,toma,tomesd,todo,catome --ratios 0.25,0.5,0.75 \
    --backends eager --repeats 6 --warmup 1 \
    --json results/bench_sdxl_block.json --markdown results/bench_sdxl_block.md --plots results/plots

step "3. Full SDXL-architecture UNet, 1024^2, eager, default levels (level 1 only) (~7 min)"
run 3 toma-export bench --workload sdxl-unet --methods none,toma,tomesd,todo --ratios 0.5 --backends eager \
    --repeats 2 --warmup 1 --json results/bench_sdxl_unet.json --markdown results/bench_sdxl_unet.md --plots results/plots

step "4. Full SDXL-architecture UNet, 1024^2, eager, both attention levels merged (~7 min)"
run 4 toma-export bench --workload sdxl-unet --methods none,toma,tomesd,todo --ratios 0.5 --backends eager \
    --max-downsample 4 --repeats 2 --warmup 1 \
    --json results/bench_sdxl_unet_all_levels.json --markdown results/bench_sdxl_unet_all_levels.md --plots results/plots

# ONNX Runtime holds one session per engine variant (ToMA: select + reuse) beside the torch model,
# so only none and toma fit in 24 GiB at SDXL width; ToMeSD does not lower exactly to ONNX.
step "5. sdxl-lite (SDXL widths/tokens, 2 transformer layers per level), 1024^2, ONNX Runtime and eager (~12 min)"
run 5 toma-export bench --workload sdxl-unet --model sdxl-lite --methods none,toma --ratios 0.5 \
    --backends eager,onnxruntime --max-downsample 4 --repeats 2 --warmup 1 --no-ideal \
    --json results/bench_sdxl_lite_ort.json --markdown results/bench_sdxl_lite_ort.md --plots results/plots

step "6. Fidelity on scikit-image photos (sdxl at 512^2) and the speed-fidelity frontier (~15 min)"
run 6 python scripts/eval_fidelity.py --model sdxl --size 512 --images astronaut,coffee,chelsea --timesteps 800,300 \
    --methods toma,tomesd,todo --ratios 0.25,0.5,0.75 --sublayers \
    --json results/fidelity_sdxl.json --markdown results/fidelity_sdxl.md \
    --bench results/bench_sdxl_block.json --frontier results/plots/frontier_sdxl.png

step "7. Flux width, 4096 image + 512 text tokens, eager (~8 min)"
run 7 toma-export bench --workload flux --methods none,toma,tomesd,todo --ratios 0.5 --backends eager \
    --repeats 2 --warmup 1 --json results/bench_flux.json --markdown results/bench_flux.md --plots results/plots

step "8. sdxl-lite, 1024^2, ONNX Runtime and eager: ToDo beside its own unmerged baseline (~8 min)"
run 8 toma-export bench --workload sdxl-unet --model sdxl-lite --methods none,todo --ratios 0.5 \
    --backends eager,onnxruntime --max-downsample 4 --repeats 2 --warmup 1 --no-ideal \
    --json results/bench_sdxl_lite_ort_todo.json --markdown results/bench_sdxl_lite_ort_todo.md --plots results/plots
