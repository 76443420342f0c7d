"""The `precision` section: bfloat16 inference through the task API (`VideoClassifier(dtype="bfloat16")`, the path of
`classify`, `evaluate`, `features`) against float32: speed-up of the predict path and deviation of the scores.

- the demo model on its rendered held-out clips (the provenance's test seed): top-1 agreement, accuracy of each,
  largest probability difference, largest logit difference relative to the clip's largest |logit|;
- full-size networks (random weights: no real Kinetics checkpoint is used here) at the preset's clip size: the
  same deviations on random clips (normalization and non-local weights drawn at random so that every block
  contributes; a fresh model's residual branches start at zero).

Both dtypes share the same float32 weights (`with_dtype` copies them) and are timed interleaved, `predict_on_batch`.
On hardware without bfloat16 the section reports why it was skipped.

Example:
    >>> bench_precision(QUICK, print)["rows"][0]["top1_agreement"]
    1.0
"""
import numpy as np

from nonlocal_zoo.benchmark.timing import time_interleaved


def randomize_weights(model, seed=0):
    """Draws the normalization, non-local and `pred` weights of a fresh model at random (in place) so that every
    residual and non-local branch contributes (fresh BN gammas after each branch are zero); convolutions keep
    their He initialisation."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape, path = tuple(v.shape), v.path
        if path.endswith("gamma"):
            value = rng.uniform(0.2, 0.5, shape)
        elif path.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif path.endswith(("beta", "moving_mean", "bias")):
            value = rng.normal(0.0, 0.05, shape)
        elif "nonlocal" in path or "pred" in path:
            value = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
        else:
            continue
        v.assign(value.astype("float32"))


def _deviation(f32, bf16, x, batch):
    """Probabilities and logits of both models on `x`; the deviations of the bfloat16 ones."""
    p32, p16 = f32.view_scores(x, batch_size=batch), bf16.view_scores(x, batch_size=batch)
    l32 = np.concatenate([np.asarray(f32.logits_model().predict_on_batch(x[i:i + batch]), np.float64)
                          for i in range(0, len(x), batch)])
    l16 = np.concatenate([np.asarray(bf16.logits_model().predict_on_batch(x[i:i + batch]), np.float64)
                          for i in range(0, len(x), batch)])
    return p32, p16, {
        "top1_agreement": float(np.mean(p32.argmax(1) == p16.argmax(1))),
        "max_prob_diff": float(np.abs(p32 - p16).max()),
        "max_rel_logit_diff": float((np.abs(l32 - l16).max(1) / np.abs(l32).max(1)).max()),
    }


def _timed(f32, bf16, x, cfg):
    fns = {dtype: (lambda m=model: np.asarray(m.predict_on_batch(x))) for dtype, model in
           (("float32", f32), ("bfloat16", bf16))}
    times = time_interleaved(fns, warmup=cfg["model_warmup"], repeats=cfg["precision_repeats"])
    return times, times["float32"]["median_s"] / times["bfloat16"]["median_s"]


def bench_precision(cfg, log):
    """bfloat16 vs float32 through `VideoClassifier`: speed-up and deviation (see the module docstring)."""
    from nonlocal_zoo.demo import NUM_FRAMES, SIZE, provenance
    from nonlocal_zoo.synthetic import make_clips
    from nonlocal_zoo.tasks import precision, resolve

    supported, what = precision.bf16_support()
    if not supported:
        log(f"precision: skipped, no bfloat16 hardware ({what})")
        return {"skipped": f"no bfloat16 hardware ({what})", "rows": []}
    rows = []
    f32 = resolve("demo")
    bf16 = f32.with_dtype("bfloat16")
    clips, labels = make_clips(cfg["precision_clips_per_class"], num_frames=NUM_FRAMES, size=SIZE,
                               seed=provenance()["data"]["test_seed"])
    x = f32.preprocessor.normalize(clips)  # (N, 8, 64, 64, 3)
    p32, p16, dev = _deviation(f32, bf16, x, 48)
    batch = cfg["precision_demo_batch"]
    times, speedup = _timed(f32, bf16, x[:batch], cfg)
    rows.append({"model": "demo (held-out clips)", "weights": "packaged", "clip": f"{NUM_FRAMES}x{SIZE}x{SIZE}",
                 "clips": len(x), "batch": batch, "accuracy_float32": float(np.mean(p32.argmax(1) == labels)),
                 "accuracy_bfloat16": float(np.mean(p16.argmax(1) == labels)), **dev, "times": times,
                 "speedup": speedup})
    log(f"precision demo: agreement {dev['top1_agreement']:.4f}, speed-up {speedup:.2f}")
    for label, preset, clip_shape in cfg["precision_models"]:
        f32 = resolve(preset, weights=None, clip_shape=clip_shape)
        randomize_weights(f32)
        bf16 = f32.with_dtype("bfloat16")
        batch = cfg["precision_batch"]
        x = np.random.default_rng(4).standard_normal((cfg["precision_inputs"],) + tuple(clip_shape)).astype("float32")
        _, _, dev = _deviation(f32, bf16, x, batch)
        times, speedup = _timed(f32, bf16, x[:batch], cfg)
        rows.append({"model": label, "weights": "random", "preset": preset,
                     "clip": "x".join(str(s) for s in clip_shape[:3]), "clips": len(x), "batch": batch, **dev,
                     "times": times, "speedup": speedup})
        log(f"precision {label}: speed-up {speedup:.2f}, max rel logit diff {dev['max_rel_logit_diff']:.4f}")
    return {"hardware": what, "rows": rows}
