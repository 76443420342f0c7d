"""The benchmark's sections and sizes: the full run (benchmarks/RESULTS.md) and the quick mode (CI, tiny shapes, the
same code paths).

Example:
    >>> QUICK["model_size"], FULL["model_size"]
    (32, 224)
"""
import os

from nonlocal_zoo.benchmark.families import FAMILIES, QUICK_FAMILIES

SECTIONS = ("machine", "matmul", "block", "chunking", "models", "precision", "pipeline", "backends", "coldstart",
            "families", "e2e")
DEFAULT_OUTPUT = os.path.join("benchmarks", "RESULTS.md")

# Block shapes (T, H, W, C) of the official networks at a 224 crop. 8x8 (repo geometry) and 32x2 (paper geometry)
# clips both reach res3 with T=4; 32x4 clips (repo geometry, 32 frames) with T=16.
BLOCK_SHAPES = {
    "res3, 8x8 / 32x2 clip": (4, 28, 28, 512),
    "res4, 8x8 / 32x2 clip": (4, 14, 14, 1024),
    "res3, 32x4 clip": (16, 28, 28, 512),
    "res4, 32x4 clip": (16, 14, 14, 1024),
}
# Long clips for the chunked attention: (T, H, W, C) at res3.
CHUNK_SHAPES = {
    "res3, 32x4 clip (T=16)": (16, 28, 28, 512),
    "res3, 32 frames, no temporal downsampling (T=32)": (32, 28, 28, 512),
}
# Full models: (label, preset, frames). 8-frame clips use the repo geometry, 32-frame clips the paper geometry.
MODELS = (
    ("I3D-NL5 R50", "i3d_nl5_r50_8x8_kinetics400", 8),
    ("I3D-NL5 R50", "i3d_nl5_r50_32x2_kinetics400", 32),
    ("C2D R50", "c2d_r50_8x8_kinetics400", 8),
    ("C2D R50", "c2d_r50_32x2_kinetics400", 32),
)

FULL = {
    "warmup": 1, "repeats": 5, "block_batch": 2, "block_shapes": BLOCK_SHAPES, "memory_shapes": 2,
    "chunk_shapes": CHUNK_SHAPES, "budget_mb": 64, "matmul_size": 2048, "models": MODELS, "model_batches": (1, 8),
    "model_size": 224, "model_repeats": 3, "model_warmup": 1, "backend_shape": (4, 14, 14, 256),
    "precision_clips_per_class": 20, "precision_demo_batch": 8, "precision_batch": 1, "precision_inputs": 4,
    "precision_repeats": 5, "precision_models": (("I3D-NL5 R50", "i3d_nl5_r50_8x8_kinetics400", (8, 224, 224, 3)),),
    # (model, num_clips, num_crops); a full-size preset is measured when its converted weights are cached (offline)
    "coldstart": (("demo", 1, 1), ("demo", 10, 1), ("i3d_nl5_r50_8x8_kinetics400", 1, 1),
                  ("i3d_nl5_r50_8x8_kinetics400", 10, 1)), "coldstart_repeats": 3,
    # (family, preset) forwards interleaved with the float32 matmul peak (nonlocal_zoo.benchmark.families)
    "families": FAMILIES, "families_repeats": 3, "families_warmup": 1,
    # classify vs mmaction2 (nonlocal_zoo.benchmark.e2e): mmaction2's demo clip, 2 clips x 3 crops of 256
    "e2e": {"preset": "i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded", "video": "demo.mp4", "num_clips": 2,
            "num_crops": 3, "repeats": 5, "phase_repeats": 2, "batch_size": 8, "compare": True, "weights": None},
}
# CI: tiny shapes, the same code paths; < 60 s on two cores.
QUICK = {
    "warmup": 1, "repeats": 3, "block_batch": 2, "block_shapes": {"tiny (T=2, 8x8, C=64)": (2, 8, 8, 64)},
    "memory_shapes": 1, "chunk_shapes": {"tiny long clip (T=8, 28x28, C=16)": (8, 28, 28, 16)}, "budget_mb": 2,
    "matmul_size": 256, "models": (("tiny I3D-NL", "tiny", 4),), "model_batches": (2,), "model_size": 32,
    "model_repeats": 2, "model_warmup": 1, "backend_shape": (2, 6, 6, 16),
    "precision_clips_per_class": 2, "precision_demo_batch": 8, "precision_batch": 2, "precision_inputs": 4,
    "precision_repeats": 2, "precision_models": (("tiny I3D-NL", "tiny_nl_i3d", (4, 32, 32, 3)),),
    "coldstart": (("demo", 10, 1),), "coldstart_repeats": 1,  # two fresh processes, ~10 s
    "families": QUICK_FAMILIES, "families_repeats": 2, "families_warmup": 1,
    "e2e": {"preset": "demo", "video": "rendered", "num_clips": 2, "num_crops": 3, "repeats": 2, "phase_repeats": 1,
            "batch_size": 8, "compare": False, "weights": "auto"},
}
# A reduced I3D-NL backbone for the quick mode and the backend checks (same builder, same code paths). Few distinct
# weight shapes: JAX compiles its random initializers once per shape, seconds each on a loaded machine.
TINY_ARCH = {
    "stem_width": 8, "stage_depths": [1, 2, 1, 1], "stage_widths": [8, 8, 8, 8], "bottleneck_expansion": 1,
    "temporal_kernels": [[3], [3, 1], [1], [3]], "nonlocal_blocks": [[], [0, 1], [], []],
}
