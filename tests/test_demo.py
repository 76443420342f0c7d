"""The embedded demo model: shipped file and provenance agree, it reaches the stated held-out accuracy, the
synthetic classes need time (reversing a clip swaps its label), and `run_demo` writes what it says."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from nonlocal_zoo import demo, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_weights_file_matches_provenance_and_top_level_copy():
    record = demo.provenance()
    path = demo.weights_path()
    assert os.path.getsize(path) == record["file_bytes"] < 5 * 2**20  # a few MB at most
    assert demo.sha256_of(path) == record["sha256"]
    assert record["classes"] == list(synthetic.CLASSES)
    assert record["arch"] == demo.variant_arch("nl")
    # weights/ at the top of the repository shows the same single file and record (links into the package)
    top = os.path.join(REPO, "weights")
    if os.path.isdir(top):
        assert os.path.samefile(os.path.join(top, demo.WEIGHTS_FILE), path)
        with open(os.path.join(top, demo.PROVENANCE_FILE), encoding="utf-8") as f:
            assert json.load(f)["sha256"] == record["sha256"]
        with open(os.path.join(top, "README.md"), encoding="utf-8") as f:
            text = f.read()
        assert record["sha256"] in text and f"{100 * record['results'][demo.NAME]['accuracy']:.1f}%" in text


def test_damaged_weights_are_refused(tmp_path, monkeypatch):
    bad = tmp_path / demo.WEIGHTS_FILE
    bad.write_bytes(b"not weights")
    monkeypatch.setattr(demo, "weights_path", lambda: str(bad))
    with pytest.raises(ValueError, match="damaged"):
        demo.load_demo_model()


@pytest.fixture(scope="module")
def model():
    return demo.load_demo_model()


def test_demo_model_reaches_stated_held_out_accuracy(model):
    record = demo.provenance()
    assert model.count_params() == record["params"]
    accuracy = demo.held_out_accuracy(model)
    stated = record["results"][demo.NAME]["accuracy"]
    assert accuracy == pytest.approx(stated, abs=0.005)
    # the miniature table: the non-local model beats the same backbone without non-local blocks
    results = record["results"]
    assert stated > results["i3d_baseline"]["accuracy"]
    assert stated > results["c2d_baseline"]["accuracy"]


def test_per_frame_information_is_not_enough(model):
    """Reversing time turns each clip of a time-reversible pair into the other class of its pair; the model's
    answer must follow, which a per-frame (order-blind) model cannot do."""
    pairs = {"moving_left": "moving_right", "rotating_clockwise": "rotating_counterclockwise",
             "approaching": "receding", "meeting": "separating"}
    pairs.update({b: a for a, b in pairs.items()})
    names = list(pairs)
    clips = np.stack([demo.demo_clip(name, seed=[99, i]) for i, name in enumerate(names)])
    forward = [top[0][1] for top in demo.classify_clips(model, clips, top=1)]
    backward = [top[0][1] for top in demo.classify_clips(model, clips[:, ::-1], top=1)]
    hits = sum(f == n for f, n in zip(forward, names)) + sum(b == pairs[n] for b, n in zip(backward, names))
    assert hits >= 0.75 * 2 * len(names)


def test_renderer_is_deterministic_and_balanced():
    a, labels = synthetic.make_clips(2, seed=5)
    b, _ = synthetic.make_clips(2, seed=5)
    c, _ = synthetic.make_clips(2, seed=6)
    assert a.dtype == np.uint8 and a.shape == (2 * len(synthetic.CLASSES), 8, 64, 64, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(labels).tolist() == [2] * len(synthetic.CLASSES)
    np.testing.assert_array_equal(synthetic.render_clip("steady", seed=[5, 9]), a[9])
    with pytest.raises(ValueError, match="Received: label='jumping'"):
        synthetic.render_clip("jumping")
    with pytest.raises(ValueError, match="Received: size=16"):
        synthetic.render_clip(0, size=16)


def test_run_demo_writes_clips_and_attention(tmp_path):
    lines = []
    summary = demo.run_demo(out_dir=str(tmp_path), num_clips=3, print_fn=lines.append)
    assert len(summary["clips"]) == 3 and all(os.path.getsize(p) > 0 for p in summary["clips"])
    for result in summary["results"]:
        assert len(result["top"]) == 3
        scores = [item["score"] for item in result["top"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    with Image.open(summary["attention"]["png"]) as png:
        # 8 frames of 64 px upscaled 3x (>= 160 px), one row, 2 px gaps
        assert png.size == (8 * 192 + 7 * 2, 192)
    with Image.open(summary["attention"]["gif"]) as gif:
        assert gif.n_frames == 8
    text = "\n".join(lines)
    assert summary["attention"]["png"] in text and "kinetics400" in text
