#!/usr/bin/env bash
# Every figure in BENCHMARKS.md. Run on a quiet machine (nothing else on the CPU), after `make venv`.
# About 10.9 hours on 2 CPU cores and 24 GiB (steps 1-8: 75 minutes). Results land in results/ (JSON, markdown, plots).
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

step "9. Other architectures at real width (2 layers; FLUX.2 1+1 blocks), eager: SD3.5 also on ONNX Runtime (~35 min)"
run 9 toma-export bench --workload sd35 --methods none,toma --ratios 0.25,0.5,0.75 --backends eager,onnxruntime \
    --repeats 3 --warmup 1 --json results/bench_sd35.json --markdown results/bench_sd35.md
run 9 toma-export bench --workload qwen-image --methods none,toma --ratios 0.25,0.5,0.75 --backends eager \
    --repeats 3 --warmup 1 --json results/bench_qwen_image.json --markdown results/bench_qwen_image.md
run 9 toma-export bench --workload wan --tile 3x4 --methods none,toma --ratios 0.25,0.5,0.75 --backends eager \
    --repeats 3 --warmup 1 --json results/bench_wan.json --markdown results/bench_wan.md
run 9 toma-export bench --workload flux2 --methods none,toma --ratios 0.5 --backends eager \
    --repeats 2 --warmup 1 --json results/bench_flux2.json --markdown results/bench_flux2.md

# One ratio on ONNX Runtime: every ToMA ratio holds a select and a reuse session of the whole model.
step "10. Qwen-Image and Wan on ONNX Runtime, ratio 0.5 (~30 min)"
run 10 toma-export bench --workload qwen-image --methods none,toma --ratios 0.5 --backends onnxruntime \
    --repeats 5 --warmup 1 --json results/bench_qwen_image_ort.json --markdown results/bench_qwen_image_ort.md
run 10 toma-export bench --workload wan --tile 3x4 --methods none,toma --ratios 0.5 --backends onnxruntime \
    --repeats 3 --warmup 1 --json results/bench_wan_ort.json --markdown results/bench_wan_ort.md

step "11. Fidelity on photos per family (real width, 2 layers, 512 px) (~15 min)"
run 11 python scripts/eval_fidelity.py --model sd35-medium-d2 --size 512 --images astronaut,coffee,chelsea \
    --timesteps 800,300 --methods toma,todo --ratios 0.25,0.5,0.75 --json results/fidelity_sd35.json \
    --markdown results/fidelity_sd35.md --bench results/bench_sd35.json --frontier results/plots/frontier_sd35.png
run 11 python scripts/eval_fidelity.py --model qwen-image-d2 --size 512 --images astronaut,coffee,chelsea \
    --timesteps 800,300 --methods toma --ratios 0.25,0.5,0.75 --json results/fidelity_qwen_image.json \
    --markdown results/fidelity_qwen_image.md --bench results/bench_qwen_image.json \
    --frontier results/plots/frontier_qwen_image.png
run 11 python scripts/eval_fidelity.py --model wan-1.3b-d2 --height 512 --width 832 --frames 5 \
    --images astronaut,coffee,chelsea --timesteps 800,300 --methods toma --ratios 0.25,0.5,0.75 \
    --json results/fidelity_wan.json --markdown results/fidelity_wan.md --bench results/bench_wan.json \
    --frontier results/plots/frontier_wan.png

step "12. sdxl-lite 1024^2 eager and torch.compile (inductor), both levels; sdxl-block on AOTInductor (~35 min)"
run 12 toma-export bench --workload sdxl-unet --model sdxl-lite --methods none,toma --ratios 0.5 --backends eager,inductor \
    --max-downsample 4 --repeats 2 --warmup 1 --json results/bench_sdxl_lite_inductor.json \
    --markdown results/bench_sdxl_lite_inductor.md
run 12 toma-export bench --workload sdxl-block --methods none,toma --ratios 0.5 --backends aotinductor \
    --repeats 5 --warmup 1 --json results/bench_sdxl_block_aoti.json --markdown results/bench_sdxl_block_aoti.md

step "13. Speed-up against the FLOP ceiling, from the JSON files above (FLOPs counted on meta tensors, ~2 min)"
run 13 python scripts/plot_ceiling.py results/*.json --out results

step "14. ToDo on the other families (key/value graph pass), eager and ONNX Runtime, against its own unmerged rows (~35 min)"
run 14 toma-export bench --workload sd35 --methods none,todo --ratios 0.25,0.5,0.75 --backends eager,onnxruntime \
    --repeats 3 --warmup 1 --json results/bench_sd35_todo.json --markdown results/bench_sd35_todo.md
run 14 toma-export bench --workload wan --tile 3x4 --methods none,todo --ratios 0.5 --backends eager,onnxruntime \
    --repeats 3 --warmup 1 --json results/bench_wan_todo.json --markdown results/bench_wan_todo.md
run 14 toma-export bench --workload wan --tile 3x4 --methods none,todo --ratios 0.25,0.75 --backends eager,onnxruntime \
    --repeats 3 --warmup 1 --json results/bench_wan_todo_sweep.json --markdown results/bench_wan_todo_sweep.md
run 14 toma-export bench --workload qwen-image --methods none,todo --ratios 0.5 --backends eager \
    --repeats 3 --warmup 1 --json results/bench_qwen_image_todo.json --markdown results/bench_qwen_image_todo.md
run 14 toma-export bench --workload flux2 --methods none,todo --ratios 0.5 --backends eager \
    --repeats 2 --warmup 1 --json results/bench_flux2_todo.json --markdown results/bench_flux2_todo.md

# 10 steps with recompute_every=5: the 20-step schedule's select/reuse split (1 select per 5 steps) in half the time.
step "15. Denoising loop at 1024^2 (sdxl-lite, both levels), eager and ONNX Runtime (~45 min)"
run 15 toma-export bench --workload sdxl-loop --model sdxl-lite --height 1024 --width 1024 --steps 10 --recompute-every 5 \
    --max-downsample 4 --methods none,toma --ratios 0.5 --backends eager,onnxruntime --repeats 1 --warmup 1 --no-ideal \
    --json results/bench_sdxl_lite_loop.json --markdown results/bench_sdxl_lite_loop.md

step "16. Z-Image-Turbo width (3840, 2 layers + 1 + 1 refiner layers), ToMA and ToDo eager, ToMA on ONNX Runtime (~20 min)"
run 16 toma-export bench --workload z-image --methods none,toma,todo --ratios 0.5 --backends eager \
    --repeats 2 --warmup 1 --json results/bench_z_image.json --markdown results/bench_z_image.md
run 16 toma-export bench --workload z-image --methods none,toma --ratios 0.5 --backends onnxruntime \
    --repeats 2 --warmup 1 --json results/bench_z_image_ort.json --markdown results/bench_z_image_ort.md

step "17. Denoising loop at 1024^2 under torch.compile (inductor; compile in the first, untimed loop) (~25 min)"
run 17 toma-export bench --workload sdxl-loop --model sdxl-lite --height 1024 --width 1024 --steps 10 --recompute-every 5 \
    --max-downsample 4 --methods none,toma --ratios 0.5 --backends inductor --repeats 1 --warmup 1 --no-ideal \
    --json results/bench_sdxl_lite_loop_inductor.json --markdown results/bench_sdxl_lite_loop_inductor.md

step "18. Flux at real width on ONNX Runtime, sessions sharing one copy of the weights (~15 min, ~21 GB peak)"
run 18 toma-export bench --workload flux --methods none,toma --ratios 0.5 --backends onnxruntime-shared \
    --repeats 2 --warmup 1 --json results/bench_flux_ort.json --markdown results/bench_flux_ort.md

step "19. Fidelity on photos, Z-Image-Turbo width (~10 min)"
run 19 python scripts/eval_fidelity.py --model z-image-d2 --size 512 --images astronaut,coffee,chelsea --timesteps 800,300 \
    --methods toma,todo --ratios 0.25,0.5,0.75 --json results/fidelity_z_image.json --markdown results/fidelity_z_image.md

step "20. FLUX.2 [klein] 4B width (2 + 4 blocks), ToMA and ToDo, eager and ONNX Runtime (shared weights) (~30 min)"
run 20 toma-export bench --workload flux2-klein --methods none,toma,todo --ratios 0.5 --backends eager,onnxruntime-shared \
    --repeats 2 --warmup 1 --json results/bench_flux2_klein.json --markdown results/bench_flux2_klein.md

step "21. Qwen-Image at every ratio, ToMA and ToDo, eager and ONNX Runtime (shared weights) in one run (~32 min)"
run 21 toma-export bench --workload qwen-image --methods none,toma,todo --ratios 0.25,0.5,0.75 \
    --backends eager,onnxruntime-shared --repeats 2 --warmup 1 --json results/bench_qwen_image_sweep.json \
    --markdown results/bench_qwen_image_sweep.md

step "22. Wan at its default 4x4 tile (30 token rows per frame: 2 border rows per frame), eager and ONNX Runtime (~15 min)"
run 22 toma-export bench --workload wan --methods none,toma --ratios 0.25,0.5,0.75 --backends eager,onnxruntime-shared \
    --repeats 2 --warmup 1 --json results/bench_wan_tile4.json --markdown results/bench_wan_tile4.md

step "23. FLUX.2 [klein] 4B width at r = 0.25 and 0.75 (the rest of the sweep; r = 0.5 is step 20), eager and ONNX Runtime (~35 min)"
run 23 toma-export bench --workload flux2-klein --methods none,toma,todo --ratios 0.25,0.75 --backends eager,onnxruntime-shared \
    --repeats 2 --warmup 1 --json results/bench_flux2_klein_sweep.json --markdown results/bench_flux2_klein_sweep.md

step "24. SDXL block under torch.compile max-autotune (inductor benchmarks its GEMM choices; compile in the first call) (~15 min)"
run 24 toma-export bench --workload sdxl-block --methods none,toma --ratios 0.5 --backends inductor,inductor-max-autotune \
    --repeats 7 --warmup 2 --json results/bench_sdxl_block_max_autotune.json --markdown results/bench_sdxl_block_max_autotune.md

step "25. Flux denoising loop at 1024² (flux workload), 5 steps = one recompute period (1 select + 4 reuse, the split of a 20-step loop with recompute_every=5), eager and ONNX Runtime (~45 min)"
run 25 toma-export bench --workload flux-loop --steps 5 --recompute-every 5 --methods none,toma --ratios 0.5 \
    --backends eager,onnxruntime-shared --repeats 1 --warmup 1 --no-ideal \
    --json results/bench_flux_loop.json --markdown results/bench_flux_loop.md

step "26. Fidelity on photos, FLUX.2 [klein] width (~12 min)"
run 26 python scripts/eval_fidelity.py --model flux2-klein-d2 --size 512 --images astronaut,coffee,chelsea --timesteps 800,300 \
    --methods toma,todo --ratios 0.25,0.5,0.75 --json results/fidelity_flux2_klein.json --markdown results/fidelity_flux2_klein.md

step "27. Overhead cuts on the SDXL block, each beside the path before it: per-site order, tile order, shared weights, +cross; eager and inductor (~4 min)"
run 27 python scripts/bench_block.py --methods "" --no-sublayers --cuts --backends eager,inductor --repeats 9 --warmup 2 \
    --json results/bench_sdxl_block_cuts.json --markdown results/bench_sdxl_block_cuts.md

step "28. The same cuts on eager, 30 rounds (a 2 % step needs them on this machine) (~3 min)"
run 28 python scripts/bench_block.py --methods "" --no-sublayers --cuts --backends eager --repeats 30 --warmup 3 --no-memory \
    --json results/bench_sdxl_block_cuts_r30.json --markdown results/bench_sdxl_block_cuts_r30.md

step "29. The same cuts on the full SDXL-architecture UNet at 1024², both attention levels, eager (~22 min)"
run 29 python scripts/bench_block.py --workload sdxl-unet --max-downsample 4 --methods "" --no-sublayers --cuts \
    --backends eager --repeats 3 --warmup 1 --json results/bench_sdxl_unet_cuts.json --markdown results/bench_sdxl_unet_cuts.md

step "30. Fidelity of the cuts on photos, sdxl at 512², both attention levels (~9 min)"
run 30 python scripts/eval_fidelity.py --model sdxl --size 512 --max-downsample 4 --methods "" --ratios 0.5 --cuts \
    --json results/fidelity_sdxl_cuts.json --markdown results/fidelity_sdxl_cuts.md

step "31. The fast preset (attn+cross+mlp, both levels) on the full SDXL-architecture UNet at 1024², against its own ideal (~13 min; BENCHMARKS quotes two runs of it, the second as bench_sdxl_unet_fast_2)"
run 31 toma-export bench --workload sdxl-unet --preset fast --methods none,toma --ratios 0.5 --backends eager \
    --repeats 5 --warmup 1 --json results/bench_sdxl_unet_fast.json --markdown results/bench_sdxl_unet_fast.md

step "32. SDXL block with cross-attention merged too, eager, ONNX Runtime and inductor in one run (~5 min)"
run 32 toma-export bench --workload sdxl-block --methods none,toma --ratios 0.5 --backends eager,onnxruntime,inductor \
    --merge attn,cross,mlp --repeats 9 --warmup 2 \
    --json results/bench_sdxl_block_cross_backends.json --markdown results/bench_sdxl_block_cross_backends.md

step "33. Flux op profile against its ideal row (profiler CPU time, 1 forward per row, not interleaved) (~7 min)"
run 33 python scripts/profile_sites.py --workload flux --ops 16 --repeats 1 --json results/profile_flux_ops.json

step "34. The fast preset on sdxl-lite at 1024², eager, ONNX Runtime and inductor in one run (~25 min; peaks near 20 GiB resident while the ONNX Runtime engines build)"
run 34 toma-export bench --workload sdxl-unet --model sdxl-lite --preset fast --methods none,toma --ratios 0.5 \
    --backends eager,onnxruntime,inductor --repeats 3 --warmup 1 \
    --json results/bench_sdxl_lite_fast_backends.json --markdown results/bench_sdxl_lite_fast_backends.md

step "35. The fast preset on the full SDXL-architecture UNet at 1024², eager and inductor in one run (~35 min)"
run 35 toma-export bench --workload sdxl-unet --preset fast --methods none,toma --ratios 0.5 \
    --backends eager,inductor --repeats 3 --warmup 1 \
    --json results/bench_sdxl_unet_fast_inductor.json --markdown results/bench_sdxl_unet_fast_inductor.md

step "36. The fast preset on sdxl-lite at 1024², AOTInductor packages built like toma-export build (~15 min; peaks near 22 GiB resident while compiling)"
run 36 toma-export bench --workload sdxl-unet --model sdxl-lite --preset fast --methods none,toma --ratios 0.5 \
    --backends aotinductor --repeats 3 --warmup 1 \
    --json results/bench_sdxl_lite_fast_aoti.json --markdown results/bench_sdxl_lite_fast_aoti.md

step "37. GPU readiness: launches, views, CPU ops, host-device copies and device reads per forward, SDXL UNet 1024² and Flux.1 full depth on the meta device (~1 min)"
run 37 python scripts/count_launches.py --json results/launches.json > results/launches.md

step "38. GPU readiness: torch.compile graphs over 6 steps, whole and regional, tiny SDXL, Flux 2+4 and the SDXL UNet (~10 min)"
run 38 python scripts/compile_probe.py > results/compile_probe.md
run 38 python scripts/compile_probe.py --targets sdxl >> results/compile_probe.md
