#!/usr/bin/env bash
# Every GPU check and benchmark of physmorph in one run (how BENCHMARKS.md's GPU rows were made).
# Usage: bash benchmarks/gpu_all.sh [tests|mpm|tuning|surface|fidelity|render|morph|release|e2e|quality ...]
# (default: all)
# Logs go to $OUT (the device tool's folder) or ./gpu_logs. Wheels in .whl/ (gsplat, trimesh) are
# installed first when present; gsplat JIT-compiles its CUDA code on first use (about 70 s).
set -uo pipefail
LOG=${OUT:-gpu_logs}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
SITE=/tmp/physmorph_site
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/*.whl || exit 1
fi
export PYTHONPATH="$SITE:$PWD/src"
MESHES=${MESHES:-../shared/meshes}
[ -d "$MESHES" ] || MESHES=.gpubuild/meshes   # a copy carried to the device machine
parts=${*:-tests mpm tuning surface fidelity render morph release e2e quality}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOG/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$LOG/device.txt"
for part in $parts; do
  start=$(date +%s)
  case $part in
    tests)   python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider tests ;;
    mpm)     python3 benchmarks/mpm_step.py --profile 1048576 &&
             python3 benchmarks/mpm_step.py --sizes 262144 1048576 --plasticity both ;;
    tuning)  python3 benchmarks/fused_tuning.py --backward ;;
    surface) python3 benchmarks/surface.py --device cuda ;;
    fidelity) python3 benchmarks/surface_fidelity.py --device cuda --meshes "$MESHES" --images "$LOG" ;;
    render)  python3 benchmarks/render.py --device cuda ;;
    morph)   python3 benchmarks/morph_reference.py --meshes "$MESHES" --device cuda --episodes 2 ;;
    release) python3 benchmarks/release.py --meshes "$MESHES" --device cuda ;;
    e2e)     python3 benchmarks/e2e.py --device cuda &&
             python3 benchmarks/e2e.py --device cuda --mode compare --source "$MESHES/isosphere.obj" \
               --target "$MESHES/bunny.obj" --iterations 12 ;;
    quality) python3 benchmarks/e2e_quality.py --device cuda --meshes "$MESHES" --dx 1 0.5 ;;
  esac 2>&1 | tee "$LOG/$part.txt"
  echo "[$part: $(( $(date +%s) - start )) s]" | tee -a "$LOG/$part.txt"
done
