#!/usr/bin/env bash
# The demo pair on a GPU machine without network, step by step (each step fits one device call; logs go to $OUT).
#   append CHUNK   append a piece of the two GGUFs (verifier then drafter-base, concatenated) to /tmp/ffjax/stream
#   convert        cut the stream into the two GGUFs, then fetch-demo-pair --offline-from (hash check, conversion)
#   adapt          examples/adapt_drafter.py: self-distillation data + LoRA training -> $OUT/delta
#   e2e DTYPE      build DIR/drafter from ffjax/demo_drafter, then benchmarks/failfast_humaneval.py in DTYPE
#   demo           python -m ffjax demo on the pair (the README's main job)
#   modeled STATS  benchmarks/modeled_speedup.py (7B/32B verifier shapes; the 32B needs most of an 80 GB GPU)
#   breakdown      benchmarks/speculate_bench.py --pair: a FailFast round's time, draft / verify / bookkeeping
#   dllm           benchmarks/dllm_bench.py --pair: the adapted drafter alone (dllm_generate passes per token)
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
WORK=/tmp/ffjax
OUT=${OUT:-/tmp/ffjax-out}
VERIFIER_BYTES=1117320768
mkdir -p "$WORK" "$OUT"
case "$1" in
  append)
    cat "$2" >> "$WORK/stream"
    [ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    ls -l "$WORK/stream" ;;
  convert)
    mkdir -p "$WORK/gguf"
    head -c "$VERIFIER_BYTES" "$WORK/stream" > "$WORK/gguf/verifier.gguf"
    tail -c +$((VERIFIER_BYTES + 1)) "$WORK/stream" > "$WORK/gguf/drafter-base.gguf"
    # No delta yet on the first pass: the drafter step fails after both conversions; they are what this step is for.
    python3 -m ffjax fetch-demo-pair "$WORK/pair" --offline-from "$WORK/gguf" 2>&1 | tee "$OUT/convert.log" || true
    test -f "$WORK/pair/verifier/demo_pair_manifest.json" && test -f "$WORK/pair/drafter-base/demo_pair_manifest.json" ;;
  adapt)
    shift
    python3 examples/adapt_drafter.py --verifier "$WORK/pair/verifier" --base "$WORK/pair/drafter-base" \
      --out "$OUT/delta" --data "$WORK/data.npz" "$@" 2>&1 | tee "$OUT/adapt.log" ;;
  e2e)
    python3 -m ffjax fetch-demo-pair "$WORK/pair" 2>&1 | tee "$OUT/fetch_$2.log"
    python3 benchmarks/failfast_humaneval.py --pair "$WORK/pair" --dtype "$2" --out "$OUT" "${@:3}" 2>&1 \
      | tee "$OUT/e2e_$2.log" ;;
  demo)
    python3 -m ffjax demo --dir "$WORK/pair" "${@:2}" 2>&1 | tee "$OUT/demo.log" ;;
  breakdown)
    python3 -m ffjax fetch-demo-pair "$WORK/pair" > "$OUT/fetch_breakdown.log" 2>&1
    python3 benchmarks/speculate_bench.py --pair "$WORK/pair" "${@:2}" 2>&1 | tee "$OUT/breakdown.log" ;;
  dllm)
    python3 -m ffjax fetch-demo-pair "$WORK/pair" > "$OUT/fetch_dllm.log" 2>&1
    python3 benchmarks/dllm_bench.py --pair "$WORK/pair" "${@:2}" 2>&1 | tee "$OUT/dllm.log" ;;
  modeled)
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python3 benchmarks/modeled_speedup.py --stats "$2" --out "$OUT" "${@:3}" \
      2>&1 | tee "$OUT/modeled.log" ;;
  *) echo "unknown step $1" >&2; exit 2 ;;
esac
