#!/usr/bin/env bash
# A separate virtual environment with mmaction2 1.2.0 on the CPU build of PyTorch, set up as a user would, for the
# end-to-end comparison of the benchmark's `e2e` section (nonlocal_zoo/benchmark/e2e.py). Nothing is installed into
# the project's own .venv.
#
# Usage:
#   bash scripts/setup_mmaction2_venv.sh [VENV_DIR] [DEMO_VIDEO]
#     VENV_DIR    where to create it (default: $MMACTION2_VENV or /work/venvs/mmaction2)
#     DEMO_VIDEO  optional: mmaction2's demo/demo.mp4 (a checkout of github.com/open-mmlab/mmaction2 has it; the
#                 wheel does not ship it); copied to VENV_DIR/share/mmaction2/demo.mp4 where the benchmark finds it
#   then:  nonlocal-zoo benchmark --sections machine matmul e2e --e2e-mmaction2-python VENV_DIR/bin/python
#     (or NONLOCAL_ZOO_MMACTION2_PYTHON=VENV_DIR/bin/python)
#
# Pins: torch==2.13.0 (the CPU build: `+cpu`; a bare `torch` from PyPI pulls the CUDA build and its libraries),
# mmaction2==1.2.0, mmengine==0.10.7 and mmcv-lite==2.1.0 with --no-deps (their declared requirements pull
# opencv-contrib-python and the full mmcv with compiled ops, none of which `init_recognizer`/`inference_recognizer`
# need), then the smallest set of their dependencies that makes
#   from mmaction.apis import init_recognizer, inference_recognizer
# import and run a recognizer on a video (checked at the end).
set -euo pipefail

VENV_DIR="${1:-${MMACTION2_VENV:-/work/venvs/mmaction2}}"
DEMO_VIDEO="${2:-}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [ -n "$DEMO_VIDEO" ] && [ ! -f "$DEMO_VIDEO" ]; then
    echo "setup_mmaction2_venv.sh: DEMO_VIDEO=$DEMO_VIDEO is not a file" >&2
    exit 2
fi

"$PYTHON" -m venv "$VENV_DIR"
PIP=("$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check)

# PyTorch, CPU build (its own dependencies: filelock, sympy, networkx, jinja2, fsspec, typing-extensions).
"${PIP[@]}" "torch==2.13.0+cpu" || "${PIP[@]}" --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu"

# The OpenMMLab packages, without their declared requirements.
"${PIP[@]}" --no-deps "mmaction2==1.2.0" "mmengine==0.10.7" "mmcv-lite==2.1.0"

# What they import on the inference path (found by tracing the modules loaded by init_recognizer, the test pipeline
# and inference_recognizer): mmengine (addict, yaml, rich, termcolor, yapf, opencv, numpy), mmcv-lite's transforms
# (opencv, Pillow, packaging), mmaction2 (decord for DecordInit, einops, scipy, importlib-metadata). Not needed:
# matplotlib (mmengine's visualizer imports it lazily), opencv-contrib-python (the headless build suffices), mmcv's
# compiled ops. numpy<2.3: the range this was verified with (2.2.6).
"${PIP[@]}" "numpy<2.3" "opencv-python-headless" addict pyyaml rich termcolor yapf packaging Pillow \
    "decord==0.6.0" einops scipy importlib-metadata

# mmaction2 1.2.0's wheel leaves out mmaction/models/localizers/drn/ (open-mmlab/mmaction2 issue #2714, open), so
# `import mmaction.models` fails; the DRN localizer is unrelated to recognizers: its import is skipped when absent.
"$VENV_DIR/bin/python" - <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("mmaction")
path = os.path.join(os.path.dirname(spec.origin), "models", "localizers", "__init__.py")
text = open(path).read()
line = "from .drn.drn import DRN\n"
if "setup_mmaction2_venv" not in text and line in text and not os.path.isdir(os.path.join(os.path.dirname(path), "drn")):
    text = text.replace(line, "try:  # patched by setup_mmaction2_venv.sh: drn/ is missing from the 1.2.0 wheel (#2714)\n"
                        "    from .drn.drn import DRN\nexcept ImportError:\n    DRN = None\n")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
EOF

if [ -n "$DEMO_VIDEO" ]; then
    mkdir -p "$VENV_DIR/share/mmaction2"
    cp "$DEMO_VIDEO" "$VENV_DIR/share/mmaction2/demo.mp4.tmp"
    mv "$VENV_DIR/share/mmaction2/demo.mp4.tmp" "$VENV_DIR/share/mmaction2/demo.mp4"
fi

# The check: the API imports, the I3D-NL config shipped with mmaction2 builds, and torch is the CPU build.
"$VENV_DIR/bin/python" - <<'EOF'
import os
import torch
import mmaction
from mmaction.apis import inference_recognizer, init_recognizer  # noqa: F401
from mmengine.config import Config

assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__
cfg = os.path.join(os.path.dirname(mmaction.__file__), ".mim", "configs", "recognition", "i3d",
                   "i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py")
config = Config.fromfile(cfg)
config.model.backbone.pretrained = None
model = init_recognizer(config, None, device="cpu")
print(f"mmaction2 {mmaction.__version__}, torch {torch.__version__}: "
      f"{sum(p.numel() for p in model.parameters()):,} parameters in the I3D-NL5 R50 recognizer")
EOF
echo "mmaction2 venv ready: $VENV_DIR/bin/python"
