#!/usr/bin/env bash
# One device call on the lent H200: torch backend checked against ONNX Runtime, model-only throughput, then the
# end-to-end pipeline benchmark (testbench/bench_pipeline.py).
#
# Prepare here (repo root), once: the wheels the image lacks, for Python 3.12 manylinux x86_64 (onnx2torch,
# qdrant-edge-py, lap, python-dotenv; see the device README for the pip download command), into .whl/, and
#   mkdir -p out/gpu_inputs/faces && cp ../shared/data/faces/{obama-720p.jpg,two_people.jpg,\
#       lin-manuel-miranda.png,alex-lacamoire.png,obama-1080p.jpg} out/gpu_inputs/faces/
# Run through the device tool, carrying .whl, checkpoints, data/demo/images (and out/gpu_inputs):
#   bash testbench/gpu/run_h200.sh                       # everything
#   SKIP_MODEL_BENCH=1 bash testbench/gpu/run_h200.sh    # the pipeline benchmark only
#   SKIP_MODEL_BENCH=1 PIPELINE_CMD=streams_bench MODELS_SET=r50 bash testbench/gpu/run_h200.sh
#       # several cameras: N = 1, 4, 8, 16 streams of the 1080p clip at full speed, then 16 live at 30 fps
#       # (MODELS_SET=r50: R50 + R100 fp16; MODELS_SET=default: the default models; STREAM_COUNTS overrides N)
#   SKIP_MODEL_BENCH=1 PIPELINE_CMD=streams_bench DECODER=nvdec bash testbench/gpu/run_h200.sh
#       # the same with NVDEC decode (PyNvVideoCodec): first, here, `pip download pynvvideocodec==2.2.4 --no-deps
#       # -d .whl` (check it is a cp312 manylinux x86_64 wheel under 60 MB). The clip is re-encoded as H.264
#       # (CODEC=h264, the default with DECODER=nvdec; the generated clips are MPEG-4 part 2). Compare with
#       # DECODER=ffmpeg CODEC=h264 for the same clip. RESULT_LAG=k: file answers applied k frames later.
# Everything lands in $OUT: run.log, nvidia-smi.csv, torch_results.json, and from the pipeline benchmark
# pipeline_*.json (one JSON line each), stage_logs.txt (the stage processes' log of each run) and
# gpu_util.txt (nvidia-smi dmon during the runs).
# The image has torch (CUDA), onnx, onnxruntime (CPU), opencv; the rest travels as wheels.
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

if [ "${SKIP_MODEL_BENCH:-0}" = 1 ]; then
    stamp "model benchmark skipped (SKIP_MODEL_BENCH=1)"
else
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
fi

# ---- end-to-end pipeline benchmark -----------------------------------------------------------------------
# testbench/bench_pipeline.py runs the real five-process pipeline on a generated 1080p clip (ten faces a frame)
# at full speed, then the model-only ceiling in the same process. Random-weight R50 runs as the "guided"
# composite (R50 computed in full, detections of the default detector), so the downstream load is real.
# PIPELINE_CMD replaces the whole step; SKIP_PIPELINE=1 skips it; FRAMES sets the frames per run.
WORK=${WORK:-/tmp/bench_pipeline}
pipeline_run() {  # NAME ARGS...: one bench_pipeline run -> $OUT/pipeline_NAME.json, its stage log appended
    local name=$1
    shift
    stamp "pipeline $name: $*"
    timeout "${RUN_TIMEOUT_S:-240}" python3 -m testbench.bench_pipeline --work "$WORK" \
        --out "$OUT/pipeline_$name.json" --label "$name" "$@" || echo "pipeline $name failed (exit $?)"
    { echo "==== $name"; cat "$WORK/stage_log.txt" 2>/dev/null; } >>"$OUT/stage_logs.txt"
}
pipeline_bench() {
    df -h /dev/shm
    nvidia-smi dmon -s u -d 1 >"$OUT/gpu_util.txt" 2>&1 &
    local dmon=$!
    pipeline_run r50_r100_fp16 --backend torch --resolution 1080p --frames "${FRAMES:-1000}" \
        --detector "$MODELS/retinaface_r50.onnx" --det-precision fp16 \
        --embedder "$MODELS/iresnet100.onnx" --embedder-kind arcface
    pipeline_run default_torch --backend torch --resolution 1080p --frames "${FRAMES:-1000}"
    pipeline_run default_onnxruntime --backend onnxruntime --resolution 1080p --frames 300
    kill "$dmon" 2>/dev/null
}
streams_bench() {  # several cameras in one pipeline: the shared detector batching across streams
    df -h /dev/shm
    nvidia-smi dmon -s u -d 1 >"$OUT/gpu_util.txt" 2>&1 &
    local dmon=$! models=() n frames model_only
    if [ "${MODELS_SET:-r50}" = r50 ]; then
        models=(--detector "$MODELS/retinaface_r50.onnx" --det-precision fp16
                --embedder "$MODELS/iresnet100.onnx" --embedder-kind arcface)
    fi
    local decoder=${DECODER:-ffmpeg} codec=${CODEC:-}
    [ -z "$codec" ] && codec=$([ "$decoder" = nvdec ] && echo h264 || echo as-made)
    models+=(--decoder "$decoder" --codec "$codec" --result-lag "${RESULT_LAG:-1}")
    if [ "$decoder" = nvdec ]; then
        python3 -c 'import PyNvVideoCodec as nvc; print("PyNvVideoCodec", nvc.__version__)' || return 1
    fi
    for n in ${STREAM_COUNTS:-1 4 8 16}; do
        frames=$(( n == 1 ? 1500 : n <= 4 ? 600 : n <= 8 ? 400 : 300 ))
        model_only=--skip-model-only
        [ "$n" = 16 ] && model_only=
        pipeline_run "${MODELS_SET:-r50}_${decoder}_s$n" --backend torch --resolution 1080p --frames "$frames" \
            --streams "$n" --det-batch "${DET_BATCH:-32}" "${models[@]}" $model_only
    done
    pipeline_run "${MODELS_SET:-r50}_${decoder}_live16" --backend torch --resolution 1080p --frames 240 --streams 16 \
        --live --live-fps 30 --det-batch "${DET_BATCH:-32}" "${models[@]}" --skip-model-only
    kill "$dmon" 2>/dev/null
    streams_summary
}
streams_summary() {  # one line per pipeline_*.json in $OUT
    python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("pipeline_*.json")):
    d = json.loads(f.read_text())
    e, st = d["latency_ms"]["end_to_end"], d.get("end_to_end_steady_ms") or {}
    print(f"{d['label']:>16} n={d['streams']:>2} fps {d['fps']:>7} steady {d.get('fps_steady')} per-stream "
          f"{d['fps_per_stream_min']}-{d['fps_per_stream_max']} dropped {d['dropped']} (steady {d.get('dropped_steady')}) e2e p50/p95/p99 "
          f"{e['p50']}/{e['p95']}/{e.get('p99')} steady {st.get('p50')}/{st.get('p95')}/{st.get('p99')} "
          f"decoder {d.get('decoder')} gpu {(d.get('gpu_util_percent') or {}).get('mean')} det-batch {d['det_batch'].get('mean')} "
          f"det-ceiling {d.get('detector_ceiling_fps')} model-only {d.get('model_only_fps')} "
          f"detect-cpu {d['stage_cpu_percent'].get('detect')} embed-cpu {d['stage_cpu_percent'].get('embed')}")
PY
}
PIPELINE_CMD=${PIPELINE_CMD:-pipeline_bench}
if [ "${SKIP_PIPELINE:-0}" != 1 ]; then
    eval "$PIPELINE_CMD" || echo "pipeline benchmark failed (exit $?)"
else
    stamp "pipeline benchmark skipped (SKIP_PIPELINE=1)"
fi
stamp done
