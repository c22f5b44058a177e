#!/usr/bin/env bash
# Every GPU measurement behind BENCHMARKS.md, each step time-limited and logged to $OUT (so a step that hangs
# or is killed still leaves the others' results). Split across device calls with STEPS, e.g.
#   STEPS="decode hf" bash benchmarks/run_gpu_suite.sh      # then   STEPS="dllm speculate" ...
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/ffjax-bench}
mkdir -p "$OUT"
STEPS=${STEPS:-"decode kernels hf dllm speculate"}
# other steps: attention attention_pdl check check_pdl flags matvec matvec_modes pdl_chain
# one per device call (up to ten minutes each): matvec_7b_ab xla_7b_ab skinny_7b_ab dllm_xla_ab pdl_dllm_ab
# attention: kernels_bench at 32k, with tokamax's kernels beside ours where TOKAMAX_WHEELS names a folder of its
# wheel and its dependencies other than jax (the device has no network: download them here, carry them there).
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" | tee "$OUT/suite.log"
run() {  # run NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name ($limit s): $*" | tee -a "$OUT/suite.log"
  timeout "$limit" "$@" 2>&1 | grep --line-buffered -v -i -E 'warning|donation' | tee "$OUT/$name.log" | tail -12 \
    | tee -a "$OUT/suite.log"
}
for step in $STEPS; do
  case $step in
    decode) run decode 420 python3 benchmarks/decode_bench.py --shapes qwen2.5-7b qwen2.5-1.5b ;;
    kernels)  # kernels per 1.5B decode step: compiled HLO and the device's own timeline, kernels on and off
      run kernels 120 python3 benchmarks/decode_kernels.py --profile --label default --hlo-out "$OUT/decode_1.5b.hlo"
      FFJAX_ATTENTION=reference run kernels_reference 120 python3 benchmarks/decode_kernels.py --profile \
        --label reference-kernels ;;
    hf) run hf 200 python3 benchmarks/hf_generate_bench.py ;;
    check) run check 240 env PYTHONPATH=. python3 benchmarks/kernels_gpu_check.py --out "$OUT" ;;
    check_pdl)  # the same checks with the PDL instructions in the kernels (FFJAX_PALLAS_PDL=on)
      mkdir -p "$OUT/pdl"
      FFJAX_PALLAS_PDL=on run check_pdl 240 env PYTHONPATH=. python3 benchmarks/kernels_gpu_check.py --out "$OUT/pdl" ;;
    matvec) run matvec 300 python3 benchmarks/matvec_bench.py --shapes qwen2.5-1.5b qwen2.5-7b ;;
    matvec_7b_ab)  # the 7B decode step with decoding-row kernels for some projections against XLA's GEMMs, A/B in
      # one process (auto keeps XLA at 7B from H200 runs; the H100 was never measured). Alone in a device call.
      run matvec_7b_ab 560 python3 benchmarks/ab_decode.py --shape qwen2.5-7b --env FFJAX_MATVEC \
        --values off o qkv,o qkv,o,gate_up on --rounds 2 --keep-going ;;
    xla_7b_ab)  # the 7B step's programs compiled with XLA's PDL options (ffjax.executables), each with and without
      # the PDL instructions in the Pallas kernels (pallas_kernels.dependent_launch): four variants in one process
      run xla_7b_ab 570 python3 benchmarks/ab_decode.py --shape qwen2.5-7b --rounds 2 --keep-going \
        --env FFJAX_PALLAS_PDL=off,on --xla-options default pdl:xla_gpu_enable_pdl=true,xla_gpu_enable_pdl_launch=true ;;
    pdl_dllm_ab)  # the same four variants on the drafter's in-loop pass (issue 3)
      run pdl_dllm_ab 560 python3 benchmarks/ab_decode.py --workload dllm --shape qwen2.5-1.5b --rounds 2 --keep-going \
        --env FFJAX_PALLAS_PDL=off,on --xla-options default pdl:xla_gpu_enable_pdl=true,xla_gpu_enable_pdl_launch=true ;;
    skinny_7b_ab)  # skinny_gemm for the 7B row's gate_up and o, at the H200 sweep's best configs
      # (benchmarks/results/skinny_sweep_mp_7b_h200.log; slower than XLA there, never timed on an H100)
      run skinny_7b_ab 560 python3 benchmarks/ab_decode.py --shape qwen2.5-7b --rounds 2 --keep-going --skinny-plans \
        landed gate_up:1x37888x3584=64/256/4/2 o:1x3584x3584=128/64/6/8 \
        "gate_up+o:1x37888x3584=64/256/4/2;1x3584x3584=128/64/6/8" ;;
    dllm_xla_ab)  # the drafter's in-loop pass under XLA options: cuBLASLt for its GEMMs, PDL
      run dllm_xla_ab 560 python3 benchmarks/ab_decode.py --workload dllm --shape qwen2.5-1.5b --rounds 2 \
        --keep-going --xla-options default cublaslt:xla_gpu_enable_triton_gemm=false,xla_gpu_enable_cublaslt=true \
        pdl:xla_gpu_enable_pdl=true,xla_gpu_enable_pdl_launch=true ;;
    pdl_chain)  # chains of tiny kernels of each kind (XLA, Pallas Triton, Pallas Mosaic GPU, with and without
      # griddepcontrol, alone and alternating with XLA fusions), µs per kernel under each XLA option set: can PDL
      # reach the Pallas kernels?
      run pdl_chain 330 python3 benchmarks/launch_chain_bench.py --out "$OUT/launch_chain.json" ;;
    matvec_modes)  # the decode step with the decoding-row kernels on and off, both shapes (profiled)
      for shape in qwen2.5-1.5b qwen2.5-7b; do for mode in on off; do
        FFJAX_MATVEC=$mode run "decode_${mode}_${shape//./_}" 100 python3 benchmarks/decode_kernels.py --profile \
          --shape "$shape" --label "${mode}_$shape"
      done; done ;;
    flags)  # the 1.5B decode step under XLA GEMM options (profiled): does XLA's own GEMM choice cost the step?
      for flags in --xla_gpu_enable_triton_gemm=false --xla_gpu_enable_split_k_autotuning=false \
                   "--xla_gpu_enable_triton_gemm=false --xla_gpu_enable_cublaslt=true"; do
        XLA_FLAGS="$flags" run "flags${flags//[^a-z]/_}" 120 python3 benchmarks/decode_kernels.py --profile \
          --label="$flags"
      done ;;
    attention)
      site=/tmp/tokamax-site
      if [ -d "${TOKAMAX_WHEELS:-}" ]; then
        python3 -m pip install -q --no-deps --no-index --target "$site" "$TOKAMAX_WHEELS"/*.whl 2>&1 | tail -3
      fi
      run attention 420 env PYTHONPATH=".:$site" python3 benchmarks/kernels_bench.py --contexts 32768 --out "$OUT" ;;
    attention_pdl)  # the 32k table with the Mosaic kernel also carrying the PDL instructions, XLA's PDL on (issue 5)
      mkdir -p "$OUT/pdl"
      XLA_FLAGS="--xla_gpu_enable_pdl=true --xla_gpu_enable_pdl_launch=true" run attention_pdl 420 \
        env PYTHONPATH=. python3 benchmarks/kernels_bench.py --contexts 32768 --pdl --out "$OUT/pdl" ;;
    dllm) run dllm 240 python3 benchmarks/dllm_bench.py ;;
    speculate) run speculate 300 python3 benchmarks/speculate_bench.py ;;
    *) echo "unknown step $step" ;;
  esac
done
