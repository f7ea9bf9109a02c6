#!/usr/bin/env bash
# Every GPU figure in one run (for a lent GPU machine): ViViT-B parity in fp32 and bf16 against
# transformers on the GPU, the dtype tests (incl. the CUDA-only bf16 test), and the benchmarks in fp32
# and bf16.  Usage, from the repository root:  bash benchmarks/gpu.sh OUTDIR
# Wheels of missing packages may be put in .whl/ (they are installed into /tmp/site first).
set -uo pipefail
out=${1:?usage: benchmarks/gpu.sh OUTDIR}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
status=0
python3 -m benchmarks.gpu_checks --device cuda --out "$out" || status=1
python3 -m pytest -q -p no:cacheprovider tests/test_dtypes.py 2>&1 | tail -3 | tee "$out/dtype_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
for dtype in float32 bfloat16; do
  python3 -m benchmarks.run --device cuda --dtype "$dtype" --warmup 3 --reps 15 --out "$out/$dtype" || status=1
done
exit $status
