"""The embedded demo model (a small non-local I3D on synthetic motion clips) and `nonlocal-zoo demo`.

The model ships with the package (`nonlocal_zoo/weights/demo_nl_motion.weights.h5`, about half a MB) together with
its provenance (`demo_nl_motion.json`: sha256, training recipe, held-out accuracies). It was trained by
`scripts/train_demo_model.py` on clips from `nonlocal_zoo.synthetic`, whose ten classes need temporal reasoning.

Example:
    >>> from nonlocal_zoo.demo import load_demo_model, demo_clip, classify_clips
    >>> model = load_demo_model()
    >>> classify_clips(model, demo_clip("moving_left")[None])[0][:1]
    [(0, 'moving_left', 0.98)]
"""
import copy
import functools
import importlib.resources
import json
import os
import time

import numpy as np

from nonlocal_zoo.presets import DEMO_ARCH, DEMO_PREPROCESSING
from nonlocal_zoo.synthetic import CLASSES, make_clips, render_clip, write_clip

NAME = "demo_nl_motion"
WEIGHTS_FILE = f"{NAME}.weights.h5"
PROVENANCE_FILE = f"{NAME}.json"
NUM_FRAMES, SIZE = 8, 64
INPUT_SHAPE = (NUM_FRAMES, SIZE, SIZE, 3)

# The architecture (a miniature I3D ResNet with two dot-product non-local blocks) and the test protocol of the demo
# model are the registry's "demo" preset (`nonlocal_zoo.presets`).
DROPOUT_RATE = 0.3
# Classes of the demo's clips, in order (a varied first few; the first one gets the attention map).
DEMO_ORDER = ("opposite_direction", "moving_right", "meeting", "rotating_clockwise", "approaching", "flashing",
              "same_direction", "moving_left", "separating", "rotating_counterclockwise", "receding", "steady")


def variant_arch(variant="nl"):
    """The demo architecture (`"nl"`) or a baseline trained beside it for the README table.

    Args:
        variant: `"nl"` (the shipped model), `"i3d"` (the same backbone without non-local blocks), `"c2d"`
            (per-frame: no temporal kernels, no non-local blocks) or `"c2d_nl"` (per-frame + non-local blocks).

    Returns:
        `build_backbone` keyword arguments.
    """
    arch = copy.deepcopy(DEMO_ARCH)
    if variant not in ("nl", "i3d", "c2d", "c2d_nl"):
        raise ValueError(f"`variant` must be 'nl', 'i3d', 'c2d' or 'c2d_nl'. Received: variant={variant!r}")
    if variant in ("i3d", "c2d"):
        arch["nonlocal_blocks"] = [[] for _ in arch["stage_depths"]]
    if variant.startswith("c2d"):
        arch["conv1_kernel"][0] = 1
        arch["temporal_kernels"] = [[1] * d for d in arch["stage_depths"]]
    return arch


def build_demo_model(variant="nl", *, seed=None):
    """The (untrained) demo network: `(B, 8, 64, 64, 3)` normalised clips -> `(B, 10)` softmax scores.

    Args:
        variant: see `variant_arch`. Defaults to `"nl"`.
        seed: optional seed for the initial weights.

    Example:
        >>> build_demo_model("i3d").count_params()
    """
    import keras

    from nonlocal_zoo.models import apply_backbone, apply_head

    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input(INPUT_SHAPE, name="clip")
    stages = apply_backbone(inputs, **variant_arch(variant))
    outputs = apply_head(stages[list(stages)[-1]], classes=len(CLASSES), dropout_rate=DROPOUT_RATE)
    return keras.Model(inputs, outputs, name=NAME if variant == "nl" else f"demo_{variant}_motion")


def _package_file(name):
    return importlib.resources.files("nonlocal_zoo").joinpath("weights", name)


def sha256_of(path):
    """Hex sha256 of a file."""
    from nonlocal_zoo.pretrained.download import hash_file

    return hash_file(path, ("sha256",))["sha256"]


@functools.lru_cache(maxsize=1)
def provenance():
    """The provenance record of the shipped weights (a dict read from the packaged JSON)."""
    return json.loads(_package_file(PROVENANCE_FILE).read_text(encoding="utf-8"))


def weights_path():
    """Path of the packaged weights file."""
    return os.fspath(_package_file(WEIGHTS_FILE))


def load_demo_model(*, verify=True):
    """The shipped demo model with its trained weights (offline, about a second).

    Args:
        verify: check the weights file's sha256 against the provenance record first. Defaults to `True`.

    Returns:
        A `keras.Model` named `"demo_nl_motion"`; inputs are clips normalised by `preprocess_clips`.

    Example:
        >>> model = load_demo_model()
        >>> model.input_shape
        (None, 8, 64, 64, 3)
    """
    path = weights_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The demo weights are missing from the package: {path}")
    if verify:
        expected = provenance()["sha256"]
        actual = sha256_of(path)
        if actual != expected:
            raise ValueError(f"The demo weights file is damaged: sha256 {actual} != {expected} (provenance). "
                             f"Received: path={path!r}")
    model = build_demo_model("nl")
    model.load_weights(path)
    return model


def preprocess_clips(clips):
    """uint8 RGB `(B, 8, 64, 64, 3)` clips -> the demo model's float32 input."""
    from nonlocal_zoo.data import normalize

    p = DEMO_PREPROCESSING
    return normalize(np.asarray(clips), mean=p["mean"], std=p["std"], scale=p["scale"])


def demo_clip(label, *, seed=2018):
    """One rendered uint8 clip `(8, 64, 64, 3)` of a class (name or index)."""
    return render_clip(label, num_frames=NUM_FRAMES, size=SIZE, seed=seed)


def classify_clips(model, clips, *, top=3, batch_size=32):
    """Top-`top` `(index, label, score)` of uint8 clips `(B, 8, 64, 64, 3)` with the demo model."""
    from nonlocal_zoo.pretrained.labels import decode_predictions

    scores = np.concatenate([np.asarray(model.predict_on_batch(preprocess_clips(clips[i:i + batch_size])))
                             for i in range(0, len(clips), batch_size)])
    return decode_predictions(scores, top=top, labels=list(CLASSES))


def held_out_accuracy(model, *, num_per_class=None, seed=None):
    """Top-1 accuracy of a demo-shaped model on freshly rendered held-out clips (the provenance's test set).

    Defaults to the test set recorded in the provenance (`test_seed`, `test_clips_per_class`).
    """
    record = provenance()["data"]
    clips, labels = make_clips(num_per_class or record["test_clips_per_class"], num_frames=NUM_FRAMES, size=SIZE,
                               seed=record["test_seed"] if seed is None else seed)
    predicted = np.array([top[0][0] for top in classify_clips(model, clips, top=1)])
    return float(np.mean(predicted == labels))


def format_demo_info():
    """A short model card of the demo model (for `nonlocal-zoo info demo`)."""
    record = provenance()
    results = record["results"]
    lines = [
        f"{NAME}: {record['description']}",
        f"  input (8, 64, 64, 3) RGB clips, classes: {', '.join(CLASSES)}",
        f"  parameters {record['params']:,}; weights {WEIGHTS_FILE} ({record['file_bytes']:,} bytes), "
        f"sha256 {record['sha256']}",
        f"  held-out accuracy ({record['data']['test_clips_per_class'] * len(CLASSES)} clips, seed "
        f"{record['data']['test_seed']}):",
    ]
    for name, row in results.items():
        lines.append(f"    {name:28s} {100 * row['accuracy']:.1f}%  ({row['params']:,} parameters)")
    lines.append(f"  reproduce: {record['command']}")
    return "\n".join(lines)


def run_demo(*, out_dir="demo_output", num_clips=5, seed=2018, print_fn=print):
    """The offline demo: renders clips, classifies them from the files, and draws an attention map.

    Writes `out_dir/clips/*.mp4` (one clip per class, cycling through the classes), prints the top-3 labels with
    scores for each, and writes `out_dir/attention.png` (contact sheet) and `out_dir/attention.gif` for the first
    clip, with the query on its moving object in the middle frame.

    Args:
        out_dir: output folder. Defaults to `"demo_output"`.
        num_clips: clips to render and classify. Defaults to `5`.
        seed: seed of the rendered clips (not the training or test seeds). Defaults to `2018`.
        print_fn: where the report goes. Defaults to `print`.

    Returns:
        dict with `clips` (paths), `results` (per clip: `true`, `top`), `attention` (`png`, `gif`) and `seconds`.
    """
    from nonlocal_zoo.attention import attention_for_video
    from nonlocal_zoo.inference import classify
    from nonlocal_zoo.tasks import VideoClassifier

    start = time.perf_counter()
    clip_dir = os.path.join(out_dir, "clips")
    os.makedirs(clip_dir, exist_ok=True)
    order = [CLASSES.index(name) for name in DEMO_ORDER]
    paths, truths = [], []
    for i in range(num_clips):
        label = order[i % len(order)]
        clip = render_clip(label, num_frames=NUM_FRAMES, size=SIZE, seed=[seed, i])
        # 4x nearest-neighbour upscale for viewing; the test protocol's resize to 64 recovers the rendered pixels
        path = os.path.join(clip_dir, f"{i:02d}_{CLASSES[label]}.mp4")
        write_clip(path, np.repeat(np.repeat(clip, 4, axis=1), 4, axis=2), fps=4)
        paths.append(path)
        truths.append(CLASSES[label])
    print_fn(f"Rendered {num_clips} synthetic motion clips (8 frames) to {clip_dir}/")

    model = VideoClassifier.from_preset("demo")  # the packaged weights, sha256-checked, with their protocol
    record = provenance()
    print_fn(f"Model: {NAME} ({record['params']:,} parameters, dot-product non-local blocks after res3 and res4; "
             f"{100 * record['results'][NAME]['accuracy']:.1f}% on held-out clips)")
    results = classify(model, paths, top_k=3)
    correct = 0
    for path, truth, result in zip(paths, truths, results):
        top = result["top"]
        correct += top[0]["label"] == truth
        mark = "ok" if top[0]["label"] == truth else "WRONG"
        print_fn(f"\n{os.path.basename(path)}  (true: {truth}, {mark})")
        for rank, item in enumerate(top, 1):
            print_fn(f"  {rank}. {item['label']:28s} {item['score']:.3f}")
    print_fn(f"\n{correct}/{num_clips} clips correct.")

    att, files = attention_for_video(model, paths[0], out_dir=out_dir)
    t, y, x = att.query
    print_fn(f"\nAttention of block {att.block} for the query t={t}, y={y}, x={x} of {os.path.basename(paths[0])} "
             f"(white cross; circles = strongest keys):")
    print_fn(f"  {files['png']}\n  {files['gif']}")
    seconds = time.perf_counter() - start
    print_fn(f"\nDone in {seconds:.1f} s. Real Kinetics-400 weights: "
             "nonlocal_zoo.nl_resnet50_3d(weights=\"kinetics400\") (downloads the official checkpoint).")
    return {"clips": paths, "results": [{"true": t_, "top": r["top"]} for t_, r in zip(truths, results)],
            "attention": files, "seconds": seconds}


def write_sample_clips(out_dir, *, num_per_class=1, seed=2018, suffix=".mp4"):
    """Renders and writes labelled sample clips as `out_dir/<class>/<i>.mp4` (a clip folder for `evaluate`)."""
    paths = []
    for c, name in enumerate(CLASSES):
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)
        for i in range(num_per_class):
            clip = render_clip(c, num_frames=NUM_FRAMES, size=SIZE, seed=[seed, c, i])
            paths.append(write_clip(os.path.join(out_dir, name, f"{i:03d}{suffix}"), clip, fps=4))
    return paths
