#!/usr/bin/env python
"""Trains the embedded demo model and the baselines of the README's miniature table, and writes the provenance.

All variants see the same rendered training clips, in the same order, from the same initial seed, and are scored
on the same held-out clips (a different renderer seed). The non-local model's weights go to
`nonlocal_zoo/weights/demo_nl_motion.weights.h5`, the record of how they were made (sha256, recipe, accuracies,
timings, versions) to `nonlocal_zoo/weights/demo_nl_motion.json`.

Usage:
    python scripts/train_demo_model.py                      # NL model + both baselines (about 9 min on 2 cores)
    python scripts/train_demo_model.py --variants nl        # only the shipped model (its record then lists no
                                                            # baselines: the shipped record comes from the default)
    python scripts/train_demo_model.py --out /tmp/w         # somewhere else (e.g. to check reproducibility)
"""
import argparse
import datetime
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from nonlocal_zoo import demo  # noqa: E402
from nonlocal_zoo.synthetic import CLASSES, make_clips  # noqa: E402

TRAIN_SEED, TEST_SEED = 1, 2  # renderer seeds of the training and held-out sets
DESCRIPTIONS = {
    "nl": "miniature I3D ResNet + 2 dot-product non-local blocks (res3, res4): the shipped model",
    "i3d": "the same backbone without non-local blocks",
    "c2d": "per-frame C2D backbone (no temporal kernels, no non-local blocks)",
    "c2d_nl": "per-frame C2D backbone + the 2 non-local blocks",
}
RESULT_NAMES = {"nl": demo.NAME, "i3d": "i3d_baseline", "c2d": "c2d_baseline", "c2d_nl": "c2d_nl"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["nl", "i3d", "c2d"], choices=sorted(DESCRIPTIONS),
                   help="models to train; 'nl' is the one shipped (default: nl i3d c2d)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--train-per-class", type=int, default=200, help="training clips per class (default: 200)")
    p.add_argument("--test-per-class", type=int, default=100, help="held-out clips per class (default: 100)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=3e-3, help="peak AdamW learning rate (cosine schedule)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights, dropout and batch order")
    p.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads (default: 2)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(demo.__file__), "weights"),
                   help="folder for the weights and provenance (default: the package's weights/)")
    return p.parse_args(argv)


def train_variant(variant, train, test, args):
    """Trains one variant from `args.seed`; returns (model, result dict)."""
    import keras

    x_train, y_train = train
    model = demo.build_demo_model(variant, seed=args.seed)
    steps = args.epochs * (len(x_train) // args.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps - steps // 10, warmup_target=args.learning_rate, warmup_steps=steps // 10)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    # Batches are sliced in order from a seeded permutation per epoch: identical for every variant.
    rng = np.random.default_rng(args.seed)
    history = []
    for epoch in range(args.epochs):
        order = rng.permutation(len(x_train))
        losses = []
        for b in range(len(x_train) // args.batch_size):
            idx = np.sort(order[b * args.batch_size:(b + 1) * args.batch_size])
            loss, _ = model.train_on_batch(demo.preprocess_clips(x_train[idx]), y_train[idx])
            losses.append(float(loss))
        history.append(round(float(np.mean(losses)), 4))
        print(f"  [{variant}] epoch {epoch + 1}/{args.epochs}: loss {history[-1]:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    x_test, y_test = test
    predicted = np.array([top[0][0] for top in demo.classify_clips(model, x_test, top=1)])
    per_class = {name: round(float(np.mean(predicted[y_test == c] == c)), 4) for c, name in enumerate(CLASSES)}
    result = {
        "description": DESCRIPTIONS[variant],
        "accuracy": round(float(np.mean(predicted == y_test)), 4),
        "per_class": per_class,
        "params": int(model.count_params()),
        "train_seconds": round(seconds, 1),
        "train_loss": history,
    }
    print(f"  [{variant}] held-out accuracy {100 * result['accuracy']:.1f}% in {seconds:.0f} s", flush=True)
    return model, result


def main(argv=None):
    args = parse_args(argv)
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    start = time.perf_counter()
    train = make_clips(args.train_per_class, num_frames=demo.NUM_FRAMES, size=demo.SIZE, seed=TRAIN_SEED)
    test = make_clips(args.test_per_class, num_frames=demo.NUM_FRAMES, size=demo.SIZE, seed=TEST_SEED)
    print(f"rendered {len(train[0])} training and {len(test[0])} held-out clips in {time.perf_counter() - start:.0f} s",
          flush=True)

    variants = ["nl"] + [v for v in args.variants if v != "nl"]  # the shipped model first
    results, shipped = {}, None
    for variant in variants:
        model, result = train_variant(variant, train, test, args)
        results[RESULT_NAMES[variant]] = result
        if variant == "nl":
            shipped = model

    os.makedirs(args.out, exist_ok=True)
    weights = os.path.join(args.out, demo.WEIGHTS_FILE)
    shipped.save_weights(weights)
    command = "python scripts/train_demo_model.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                                      if (argv if argv is not None else sys.argv[1:]) else "")
    record = {
        "name": demo.NAME,
        "description": "miniature non-local I3D ResNet (3 stages, 2 dot-product NL blocks) for 12 synthetic "
                       "motion classes that need temporal reasoning",
        "file": demo.WEIGHTS_FILE,
        "sha256": demo.sha256_of(weights),
        "file_bytes": os.path.getsize(weights),
        "params": int(shipped.count_params()),
        "classes": list(CLASSES),
        "input_shape": list(demo.INPUT_SHAPE),
        "arch": demo.variant_arch("nl"),
        "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in demo.DEMO_PREPROCESSING.items()},
        "data": {
            "renderer": "nonlocal_zoo.synthetic.make_clips",
            "train_seed": TRAIN_SEED,
            "train_clips_per_class": args.train_per_class,
            "test_seed": TEST_SEED,
            "test_clips_per_class": args.test_per_class,
        },
        "training": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": "AdamW(weight_decay=1e-4), 10% linear warm-up then cosine decay",
            "learning_rate": args.learning_rate,
            "seed": args.seed,
            "threads": args.threads,
            "dropout": demo.DROPOUT_RATE,
            "total_seconds": round(time.perf_counter() - start, 1),
        },
        "results": results,
        "command": command,
        "environment": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "machine": platform.machine(),
            "date": datetime.date.today().isoformat(),
        },
        "licence": "Apache-2.0 (trained here on procedurally generated data)",
    }
    provenance = os.path.join(args.out, demo.PROVENANCE_FILE)
    with open(provenance, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(f"\nwrote {weights} ({record['file_bytes']:,} bytes, sha256 {record['sha256']})\nwrote {provenance}")
    print("\n| model | params | held-out accuracy |\n|---|---|---|")
    for name, result in results.items():
        print(f"| {name}: {result['description']} | {result['params']:,} | {100 * result['accuracy']:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
