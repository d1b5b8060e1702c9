#!/usr/bin/env bash
# Every figure in BENCHMARKS.md, in the order it was measured. Run on a quiet machine, after `make venv`.
# Takes about an hour on 2 CPU cores. Results land in results/ (JSON, markdown, plots).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
mkdir -p results/plots
step() { echo; echo "== $* =="; }

step "1. SDXL block (issue 2 table, sub-layer defaults)"
python scripts/bench_block.py --repeats 10 --warmup 2 --json results/bench_block.json --markdown results/bench_block.md

step "2. SDXL block: methods x ratios, eager"
toma-export bench --workload sdxl-block --methods none,toma,tomesd,todo,catome --ratios 0.25,0.5,0.75 \
    --backends eager --repeats 6 --warmup 1 \
    --json results/bench_sdxl_block.json --markdown results/bench_sdxl_block.md --plots results/plots

step "3. Full SDXL-architecture UNet, 1024^2, eager"
toma-export bench --workload sdxl-unet --methods none,toma,tomesd,todo --ratios 0.5 --backends eager \
    --repeats 2 --warmup 1 --json results/bench_sdxl_unet.json --markdown results/bench_sdxl_unet.md --plots results/plots

step "4. SDXL widths/tokens with 2 transformer layers per level (sdxl-lite), 1024^2, ONNX Runtime vs eager"
toma-export bench --workload sdxl-unet --model sdxl-lite --methods none,toma,todo --ratios 0.5 \
    --backends eager,onnxruntime --repeats 2 --warmup 1 --no-ideal \
    --json results/bench_sdxl_lite_ort.json --markdown results/bench_sdxl_lite_ort.md --plots results/plots

step "5. Flux width, 4096 image + 512 text tokens, eager"
toma-export bench --workload flux --methods none,toma,tomesd,todo --ratios 0.5 --backends eager \
    --repeats 2 --warmup 1 --json results/bench_flux.json --markdown results/bench_flux.md --plots results/plots

step "6. Fidelity on scikit-image photos (sdxl at 512^2) and the speed-fidelity frontier"
python scripts/eval_fidelity.py --model sdxl --size 512 --images astronaut,coffee,chelsea --timesteps 800,300 \
    --methods toma,tomesd,todo --ratios 0.25,0.5,0.75 \
    --sublayers --json results/fidelity_sdxl.json --markdown results/fidelity_sdxl.md \
    --bench results/bench_sdxl_block.json --frontier results/plots/frontier_sdxl.png
