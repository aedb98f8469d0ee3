#!/usr/bin/env bash
# One device call on the lent H200: torch backend checked against ONNX Runtime, then model-only throughput.
#
# Prepare here (repo root), once:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl onnx2torch==1.5.15
#   mkdir -p out/gpu_inputs/faces && cp ../shared/data/faces/{obama-720p.jpg,two_people.jpg,\
#       lin-manuel-miranda.png,alex-lacamoire.png,obama-1080p.jpg} out/gpu_inputs/faces/
# Run through the device tool, carrying .whl, checkpoints and out/gpu_inputs:
#   bash testbench/gpu/run_h200.sh
# Everything lands in $OUT: run.log, nvidia-smi.csv, torch_results.json (and pipeline_results.json, see HOOK).
# The image has torch (CUDA), onnx, onnxruntime (CPU), opencv; only onnx2torch travels as a wheel.
set -uo pipefail
OUT=${OUT:-out/gpu_results}
MODELS=${MODELS:-/tmp/models}
FACES=${FACES:-out/gpu_inputs/faces}
[ -d "$FACES" ] || FACES=../shared/data/faces
BUDGET_S=${BUDGET_S:-330}  # bench_torch skips compile runs past this many seconds
mkdir -p "$OUT" "$MODELS"
exec > >(tee -a "$OUT/run.log") 2>&1
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$(date +%s)
stamp() { echo "== $(( $(date +%s) - start ))s: $*"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >"$OUT/nvidia-smi.csv"
cat "$OUT/nvidia-smi.csv"
python3 -c 'import torch, onnx2torch, onnxruntime, cv2; print("torch", torch.__version__, torch.cuda.get_device_name(0), "ort", onnxruntime.__version__, "cv2", cv2.__version__)' || exit 1

stamp "export random-weight RetinaFace-R50 and IResNet100 (benchmark only)"
python3 -m testbench.export_onnx retinaface_r50 --random-weights -o "$MODELS/retinaface_r50.onnx" --no-check || exit 1
python3 -m testbench.export_onnx iresnet100 --random-weights -o "$MODELS/iresnet100.onnx" --no-check || exit 1

stamp "verify against ONNX Runtime, then throughput"
python3 -m testbench.gpu.bench_torch --out "$OUT/torch_results.json" --faces "$FACES" --budget-s "$BUDGET_S" \
    --bench-model "r50=$MODELS/retinaface_r50.onnx@640:1,8,32" \
    --bench-model "r100=$MODELS/iresnet100.onnx@112:1,64,256" \
    --bench-model "mnet025=checkpoints/retinaface_mnet025.onnx@640:1,8,32" \
    --bench-model "dlib=checkpoints/dlib_resnet.onnx@150:1,64,256" \
    --bench-model "mnet025=checkpoints/retinaface_mnet025.onnx@640:1,8,32:fp32" \
    --bench-model "r50=$MODELS/retinaface_r50.onnx@640:1,8,32:fp32" \
    --compile-mode "${COMPILE_MODE:-default}" \
    --compile-model "mnet025=checkpoints/retinaface_mnet025.onnx@640:1,32" \
    --compile-model "r100=$MODELS/iresnet100.onnx@112:64" \
    --compile-model "r50=$MODELS/retinaface_r50.onnx@640:8"
stamp "bench_torch exit $?"

# ---- HOOK: end-to-end pipeline benchmark ------------------------------------------------------------------
# testbench/bench_pipeline.py (pipeline engineer) runs here once it exists, with the same PYTHONPATH, the
# default models in checkpoints/, the benchmark models in $MODELS and the faces in $FACES. Set PIPELINE_CMD
# to its real command line; it should write "$OUT/pipeline_results.json". SKIP_PIPELINE=1 skips it.
PIPELINE_CMD=${PIPELINE_CMD:-"python3 -m testbench.bench_pipeline --backend torch --out $OUT/pipeline_results.json"}
if [ "${SKIP_PIPELINE:-0}" != 1 ] && [ -f testbench/bench_pipeline.py ]; then
    stamp "pipeline benchmark: $PIPELINE_CMD"
    eval "$PIPELINE_CMD" || echo "pipeline benchmark failed (exit $?)"
else
    stamp "pipeline benchmark skipped (SKIP_PIPELINE=${SKIP_PIPELINE:-0}, bench_pipeline.py present: $([ -f testbench/bench_pipeline.py ] && echo yes || echo no))"
fi
stamp done
