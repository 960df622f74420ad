#!/usr/bin/env bash
# The worker's CUDA path and the in-model batching benchmark on a GPU machine, in one pass
# that fits a short lease (about 9 minutes; each step has its own time limit, so that one
# overrunning leaves the others their time). What it writes (the tests' log, the profiles, the
# benchmark's logs and JSON) goes to a work folder, packed into $OUT/gpu.tgz after every step
# (default OUT: ./gpu-out), so that a step cut short leaves what the others wrote.
#
# Needs python3 with torch (CUDA), aiohttp, numpy, typer, rich, prometheus-client and pyyaml;
# the packages the workers need beyond those (pydantic, orjson, ...) can come as wheels in
# .whl/ (installed to /tmp/site first: the GPU machine reaches no package index).
#
#   bash bench/gpu/check.sh            # on the GPU machine, from the repository root
#
# bench/results/cellular-gpu.md quotes what it measured (bench/gpu/report.py renders it from
# the folder its runs are copied to, bench/results/gpu-h200/run-HHMM).
set -u
OUT=${OUT:-gpu-out}
WORK=$(mktemp -d)
DEV=${DEV:-cuda}          # DEV=cpu BENCH_S=40: a dry run of the whole script on a machine without one
BENCH_S=${BENCH_S:-200}   # each benchmark part's limit
WHEELS=${WHEELS:-.whl}    # WHEELS=none: use the packages installed
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/workers:$PWD/solver:$PWD/operator:$PWD"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to NAME.log, say how it went
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc $rc in $((SECONDS - t0)) s (limit $limit s)" | tee -a "$WORK/steps.log"
  tail -n 4 "$WORK/$name.log"
  tar -czf "$OUT/gpu.tgz" -C "$WORK" .
  return $rc
}

step preflight 60 python3 -c "
import torch, accordion.workers.server, bench.cellular.run
print(torch.__version__, torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))
" || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
  >"$WORK/gpu.txt" 2>&1

# 1. the tests of the models' execution, on CUDA (CI has no GPU: there they skip)
step tests 100 python3 -m pytest -q -p no:cacheprovider -k "$DEV" -o addopts="" \
  --import-mode=importlib tests/workers/test_staged.py tests/workers/test_staged_worker.py \
  tests/workers/test_server.py || { echo "tests failed: no benchmark"; exit 1; }

# 2. profiles on the GPU: a request-level model, and the cells' steps per batch size
step profile-demo 40 python3 -m accordion.workers profile --model builtin:demo-m \
  --device "$DEV" --pool h200 --batch-sizes 1,8,32,128 --repeats 20
step profile-gru 40 python3 -m accordion.workers profile --model builtin:gru-seq --stages \
  --device "$DEV" --pool h200 --batch-sizes 1-4,8,16,32,64,128,256 --repeats 18
step profile-decoder 40 python3 -m accordion.workers profile --model builtin:decoder-tiny \
  --stages --device "$DEV" --pool h200 --batch-sizes 1-4,8,16,32,64,128,256 --repeats 18

# 3. cellular against the request-level baselines, every worker on the GPU: the CPU bench's
# search (ladder, bisection, noise rule, equal rate) made coarser and shorter to fit a lease
# (settings recorded in the JSON); cellular, our SloBatcher and Triton's batcher at max batch
# 64 and 256 (Triton at 256 was the CPU bench's best baseline on 2026-12-06; the runs before
# stopped at 64)
common=(--device "$DEV" --out "$WORK" --duration-s 2.5 --ladder-step 1.5 --bisect 1
  --equal-rate-s 5 --configs "max batch 64,max batch 256")
step bench-seq "$BENCH_S" python3 bench/cellular/run.py --part seq --start 225 --max-rate 1800 \
  "${common[@]}"
step bench-dec "$BENCH_S" python3 bench/cellular/run.py --part dec --start 75 --max-rate 700 \
  "${common[@]}"
exit 0
