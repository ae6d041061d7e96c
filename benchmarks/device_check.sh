#!/usr/bin/env bash
# The prepared GPU check (benchmarks/device_check.py): one call of the device tool, at most 8 minutes.
#
#   bash benchmarks/device_check.sh --fetch-wheels   # here, once: wheels the device lacks (device_wheels.txt)
#   bash benchmarks/device_check.sh                   # on the device: writes $OUT/device_check.{json,md,log}
#   bash benchmarks/device_check.sh --smoke           # anywhere, tiny, on CPU (~1 minute)
#
# The device call: run(command='bash benchmarks/device_check.sh', carry=['benchmarks/out/device_wheels'],
# timeout_s=540). Other arguments go to `python -m benchmarks.device_check` (--parts=model,train, ...).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ "${1:-}" == "--fetch-wheels" ]]; then
  shift
  exec "$PY" -m benchmarks.device_check --fetch_wheels "$@"
fi
OUT_DIR=${OUT:-benchmarks/out/device_check}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
# No CPU-only XLA flag may reach a jaxlib that does not know it (it aborts at start-up).
if [[ -n "${XLA_FLAGS:-}" ]]; then
  XLA_FLAGS=$(echo "$XLA_FLAGS" | tr ' ' '\n' | grep -v '^--xla_cpu_experimental_' | tr '\n' ' ' | sed 's/ *$//')
  if [[ -z "$XLA_FLAGS" ]]; then unset XLA_FLAGS; else export XLA_FLAGS; fi
fi
"$PY" -m benchmarks.device_check --out="$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/device_check.log"
exit "${PIPESTATUS[0]}"
