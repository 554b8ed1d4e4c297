#!/usr/bin/env bash
# The device check: igmu on a CUDA GPU, as one script (a lent GPU machine has torch, transformers and
# safetensors but not every igmu dependency: wheels carried in .whl/ are installed to a scratch folder).
#   bash bench/gpu_check.sh OUT_DIR
# 1. the world model: `igmu eval` and `igmu run --algorithm salun` on ball, full budget, on cuda (scores
#    and seconds, to compare with the CPU figures in docs/benchmarks.md);
# 2. bench/sd_scale.py at SD 1.4's shape: ESD and SalUn steps and sampling throughput per precision.
set -u
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$out/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$out/env.txt"
for spec in "eval --model base --target ball" "run --algorithm salun --target ball"; do
  name=$(echo "$spec" | cut -d' ' -f1)
  start=$(date +%s)
  python3 -m igmu.cli $spec --device cuda --json > "$out/world-$name.json" 2> "$out/world-$name.err"
  echo "world $name rc=$? wall_s=$(( $(date +%s) - start ))" | tee -a "$out/env.txt"
  tail -3 "$out/world-$name.err"
done
python3 bench/sd_scale.py --shape sd14 --device cuda --batch-sizes 1,4,8,16,32 --steps 50 --train-steps 3 \
  --json "$out/sd14.json" 2>&1 | tail -40
