#!/usr/bin/env bash
# The whole GPU measurement in one run of about 6 minutes (docs/gpu.md): the GPU tests, the prior-side
# and whole-step benchmarks of every method beside the plain threestudio-style SDS step (graphs on and
# off), the field's compiled vs reference encoding, the CLI on a saved full-size random SD 2.1-base
# folder, and the shapes demo on CUDA. Prints a table last and writes one JSON to $OUT (name:
# gpu_check_<card>_<date>.json, to commit under bench/results/). Each stage has a time cap and the
# run as a whole stops starting stages after BUDGET_S seconds (default 350; 500 for --cpu-smoke).
#
#   bash bench/gpu_check.sh               # on the GPU machine (torch, transformers, accelerate there)
#   bash bench/gpu_check.sh --cpu-smoke   # here: the same stages with tiny shapes on the CPU, in a minute
#
# What the GPU machine lacks travels as wheels in .whl/ (ignored by git through .git/info/exclude; they
# are installed into /tmp/site when present). Fetch them once, in the repository root, on a machine
# with pip and internet (Python 3.12 wheels for x86-64 Linux; their other needs are on the GPU machine):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
#     --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer==0.1.0 pyzmq==27.3.0 PyMCubes==0.1.6 \
#     xatlas==0.0.11 trimesh==5.2.0 fast-simplification==0.2.0
#
# With the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=420).
set -u
MODE=gpu
[[ "${1:-}" == "--cpu-smoke" ]] && MODE=smoke
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
OUT=${OUT:-$(mktemp -d)}
WORK=$(mktemp -d)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"

if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >> "$LOG" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/site" || echo "installing .whl/ failed (see $LOG)"
fi

# stage NAME SECONDS COMMAND...: run with a cap (never past the budget), log it, record rc and seconds.
stage() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET_S - SECONDS))
    if ((left < 10)); then
        echo "{\"stage\": \"$name\", \"rc\": \"skipped\", \"seconds\": 0}" >> "$WORK/stages.jsonl"
        return
    fi
    ((cap > left)) && cap=$left
    local start=$SECONDS
    echo "=== $name (cap ${cap}s)" | tee -a "$LOG"
    timeout --kill-after=5 "$cap" "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    cat "$WORK/$name.log" >> "$LOG"
    tail -n 4 "$WORK/$name.log"
    echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}" >> "$WORK/stages.jsonl"
}

if [[ $MODE == gpu ]]; then
    BUDGET_S=${BUDGET_S:-350} ENV_CAP=20
    DEVICE=cuda SIZE=sd21-base PRESET=standard DEMO_PRESET=draft
    SD_ARGS=(--steps 8 --warmup 3 --graphs both --components)
    CLI_STEPS=150 DEMO_STEPS=${DEMO_STEPS:-300}
    FIELD_ARGS=(--samples 200000 --repeat 5)
    CAPS=(100 120 60 70 35 45)
    TEXTURE_ARGS=(--steps 200 --resolution 256)
else  # tiny shapes on the CPU: checks the script, its commands and the table, not speed
    export CUDA_VISIBLE_DEVICES=""
    # one PyTorch thread per command unless the caller says otherwise: on a shared CPU, torch's default
    # (a thread per core) makes tiny tensors wait on each other and a stage can run past its cap
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    # on a shared CPU the imports alone can take most of a minute: wider caps, so the smoke checks the
    # commands rather than how busy the machine is (the demo cap too; the test gives the script 600 s)
    BUDGET_S=${BUDGET_S:-500} ENV_CAP=60
    DEVICE=cpu SIZE=tiny PRESET=tiny DEMO_PRESET=tiny
    SD_ARGS=(--steps 1 --warmup 1 --graphs both --components --resolution 16 --threads 1 --max-steps 100)
    CLI_STEPS=2 DEMO_STEPS=3
    FIELD_ARGS=(--samples 2000 --repeat 2 --no-compile --threads 1)
    CAPS=(60 120 120 120 60 90)
    TEXTURE_ARGS=(--steps 3 --resolution 16 --texture-size 64)
fi

stage env "$ENV_CAP" bash -c "nvidia-smi -L 2>/dev/null; $PY -c 'import torch, diffusers, transformers; \
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available(), \
\"diffusers\", diffusers.__version__, \"transformers\", transformers.__version__)'"
stage pytest_gpu "${CAPS[0]}" $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_nerf.py \
    tests/test_cuda_graphs.py tests/test_compiled_field.py
stage bench_sd "${CAPS[1]}" $PY bench/bench_sd.py --device "$DEVICE" --size "$SIZE" --render image,nerf \
    "${SD_ARGS[@]}" --json "$WORK/bench_sd.json"
stage demo "${CAPS[2]}" $PY -m backend generate "a red cube" --device "$DEVICE" --preset "$DEMO_PRESET" \
    --steps "$DEMO_STEPS" --out "$WORK/demo"
stage cli "${CAPS[3]}" bash -c "$PY -m backend.priors.sd_random '$WORK/sd' --size $SIZE --dtype float16 && \
$PY -m backend generate 'a DSLR photo of a hamburger' --prior '$WORK/sd' --offline --device $DEVICE \
--preset $PRESET --steps $CLI_STEPS --no-export --out '$WORK/cli'"
stage bench_field "${CAPS[4]}" $PY bench/bench_field.py --device "$DEVICE" "${FIELD_ARGS[@]}" \
    --json "$WORK/bench_field.json"

# texture mode (docs/selection.md) on the shapes prior's true cube: reported, no target yet
stage texture "${CAPS[5]}" bash -c "$PY -c 'import sys; from backend.texture.truth import catalog_trimesh; \
from backend.export.frames import to_gltf; m = catalog_trimesh(\"cube\"); m.vertices = to_gltf(m.vertices); \
m.export(sys.argv[1])' '$WORK/cube.glb' && $PY -m backend texture '$WORK/cube.glb' 'a red cube' --fit none \
--device $DEVICE --preset $DEMO_PRESET ${TEXTURE_ARGS[*]} --out '$WORK/texture'"

echo "=== summary (${SECONDS}s in all)"
$PY bench/gpu_summary.py "$WORK" "$OUT" 2>&1 | tee -a "$LOG"
