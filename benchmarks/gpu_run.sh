#!/usr/bin/env bash
# The GPU checks, as run on the lent NVIDIA H100 (Python 3.12, JAX with CUDA, torch, timm; no
# TensorFlow, Grain, TFDS or ml_collections). First, here: `bash benchmarks/gpu_wheels.sh` puts the
# wheels the image lacks in .whl/ and Fashion-MNIST's idx files in .data/fashion-mnist/ (both ignored
# by git; carry: [".whl", ".data"]; checked in a Python with only the image's packages and these).
# Then, from the repo root there:
#   bash benchmarks/gpu_run.sh PART [OUT]
# PART: facts | tests | train | bench_s | bench_b | bench_families | bench_train | profile. Output goes to OUT (default benchmarks/results/gpu).
set -uo pipefail
PART=${1:?facts|tests|train|bench_s|bench_b|bench_families|bench_train|profile}
OUT=${2:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD"
fi
case "$PART" in
  facts)
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      python3 -c "import sys, jax, flax, optax, orbax.checkpoint as o, torch, timm; print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'torch', torch.__version__, 'timm', timm.__version__); print(jax.devices())"
      python3 - <<'EOF'
import jax, jax.numpy as jnp
from tpm_jax.models import vit
q = jnp.ones((2, 197, 6, 64), jnp.bfloat16)
bias = jnp.zeros((2, 1, 197, 197), jnp.bfloat16)
for b in (None, bias):
  try:
    jax.jit(lambda q, b: jax.nn.dot_product_attention(q, q, q, bias=b, implementation='cudnn')).lower(q, b).compile()
    print('cudnn attention, bias', b is not None, ': compiles')
  except Exception as e:
    print('cudnn attention, bias', b is not None, ': refused:', type(e).__name__, str(e)[:200])
print('attention_implementation(bf16, 64) =', vit.attention_implementation(jnp.bfloat16, 64))
EOF
    } 2>&1 | tee "$OUT/facts.txt" ;;
  tests)
    # float32 matmuls at full precision, as the tests' 1e-5 tolerances assume (TF32 is the GPU default)
    # (tests/conftest.py hides GPUs from TensorFlow with CUDA_VISIBLE_DEVICES='' unless it is set)
    CUDA_VISIBLE_DEVICES=0 JAX_PLATFORMS=cuda JAX_DEFAULT_MATMUL_PRECISION=highest python3 -m pytest -q -p no:cacheprovider \
      tests/test_attention.py tests/test_models.py tests/test_reduction.py tests/test_timm_parity.py \
      tests/test_train.py -k "not end_to_end and not imagenet and not sharded and not keep_rate_warmup" \
      2>&1 | tee "$OUT/tests.txt" ;;
  train)
    python3 scripts/train_arrays.py --config configs/quickstart.py:stage=pretrain --data .data/fashion-mnist \
      --epochs "${EPOCHS:-10}" --dtype bfloat16 2>&1 | grep -v Warning | tee "$OUT/train_quickstart_pretrain.txt" ;;
  bench_s)
    python3 benchmarks/throughput.py --models deit_small_patch16_224 --settings none,tpm:0.7,evit:0.7,tome:13 \
      --dtypes float32,bfloat16 --batches 1,64,256 --train_batch 0 --repeats 3 --min_time 0.5 --out "$OUT/throughput_deit_s" \
      2>&1 | grep -v Warning ;;
  bench_b)
    python3 benchmarks/throughput.py --models deit_base_patch16_224 --settings none,tpm:0.7,evit:0.7,tome:13 \
      --dtypes float32,bfloat16 --batches 1,64,256 --train_batch 0 --repeats 3 --min_time 0.5 --out "$OUT/throughput_deit_b" \
      2>&1 | grep -v Warning ;;
  bench_families)
    # issue 24: the vision towers in bfloat16 at batch 256, none / tome / tpm at matched token counts
    # (tome:0.7 merges to tpm:0.7's counts at the same blocks) against PyTorch timm's unpruned model
    python3 benchmarks/throughput.py --models vit_base_patch16_siglip_224,vit_base_patch16_clip_224,vit_small_patch14_dinov2 \
      --settings none,tome:0.7,tpm:0.7 --dtypes bfloat16 --batches 256 --train_batch 0 --img_size 224 --repeats 3 \
      --min_time 0.5 --out "$OUT/throughput_families_bf16" 2>&1 | grep -v Warning ;;
  bench_train)
    # the train step (the project's, as the trainer compiles it) against PyTorch timm's, DeiT-S batch 256
    python3 benchmarks/throughput.py --models deit_small_patch16_224 --settings none,tpm:0.7,evit:0.7 \
      --dtypes bfloat16,float32 --batches 256 --train_batch 256 --repeats 3 --min_time 0.5 \
      --out "$OUT/throughput_deit_s_train" 2>&1 | grep -v Warning ;;
  profile)
    # where tpm's time goes in bf16 at batch 256 (device time by part of the model and by op), with the
    # variants that isolate its parts: without proportional attention (no attention bias after the first
    # reduction), with the tokens as the similarity metric; then the same variants' images/s, interleaved
    V=none,evit:0.7,tpm:0.7,tpm:0.7@prop_attn=off,tpm:0.7@similarity=tokens,tome:13
    python3 benchmarks/profile_ops.py --model deit_small_patch16_224 --settings "$V" --dtype bfloat16 --batch 256 \
      --steps 10 --out "$OUT/profile_deit_s_bf16" 2>&1 | grep -v Warning
    python3 benchmarks/throughput.py --models deit_small_patch16_224 --settings "$V" --dtypes bfloat16 --batches 256 \
      --train_batch 0 --repeats 3 --min_time 0.5 --no_torch --out "$OUT/throughput_deit_s_variants" 2>&1 | grep -v Warning ;;
esac
