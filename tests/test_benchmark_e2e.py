"""The benchmark's `e2e` section: its quick mode runs our end-to-end `classify` in float32 and bfloat16 and reports the
mmaction2 side as skipped with a message naming what is missing; locating the mmaction2 venv and the demo clip."""
import os
import subprocess
import sys

import pytest

from nonlocal_zoo import benchmark
from nonlocal_zoo.benchmark import e2e


def test_quick_e2e_section_runs_classify_in_both_dtypes(tmp_path):
    from nonlocal_zoo.tasks import precision

    missing = str(tmp_path / "no_venv" / "bin" / "python")
    results = benchmark.run(quick=True, sections=("e2e",), mmaction2_python=missing, log=lambda m: None)
    r = results["e2e"]
    assert r["preset"] == "demo" and r["views"] == "2x3"
    assert "does not exist" in r["mmaction2"]["skipped"] and missing in r["mmaction2"]["skipped"]
    assert len(r["matmul"]) == len(r["phases"]) and all(m["size"] > 0 for m in r["matmul"].values())
    assert "mmaction2" not in r["times"] and "speedup" not in r
    dtypes = ["float32", "bfloat16"] if precision.bf16_support()[0] else ["float32"]
    assert sorted(r["phases"]) == sorted(dtypes)
    for dtype in dtypes:
        t = r["times"][f"ours {dtype}"]
        assert t["runs"] == 2 and t["median_s"] > 0 and t["cpu_median_s"] > 0
        phases = r["phases"][dtype]
        assert phases["forward"]["gflops"] > 0 and phases["gmacs"] > 0
        f, peak = phases["forward"], r["sustained"][dtype]
        assert f["fraction_of_peak"] == pytest.approx(f["gflops"] / peak[f"peak_{dtype}"])  # sustained, medians
        assert f["fraction_of_burst_peak"] == pytest.approx(f["gflops"] / r["matmul"][dtype][f"peak_{dtype}"])
    assert r["agreement"]["float32"]["max_abs_prob_diff"] == 0.0  # the same model, the same views: repeatable
    if "bfloat16" in dtypes:  # bfloat16 really ran: close to float32, not equal
        bf16 = r["agreement"]["bfloat16"]
        assert 0 < bf16["max_abs_prob_diff"] < 0.03 and bf16["top1_same"]
    report = "\n".join(benchmark.render_e2e(results))
    assert "## End to end: `classify` vs mmaction2" in report and "| ours | float32 |" in report
    assert "mmaction2 side:" in report


def test_mmaction2_python_and_video_are_located(tmp_path, monkeypatch):
    monkeypatch.delenv(e2e.PYTHON_ENV, raising=False)
    monkeypatch.delenv(e2e.VIDEO_ENV, raising=False)
    monkeypatch.setattr(e2e, "DEFAULT_VENV", str(tmp_path / "absent"))
    python, why = e2e.find_mmaction2_python()
    assert python is None and "setup_mmaction2_venv.sh" in why and e2e.PYTHON_ENV in why
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    monkeypatch.setenv(e2e.PYTHON_ENV, str(venv / "bin" / "python"))
    assert e2e.find_mmaction2_python() == (str(venv / "bin" / "python"), None)
    assert e2e.find_video(None, str(venv / "bin" / "python")) is None
    (venv / "share" / "mmaction2").mkdir(parents=True)
    (venv / "share" / "mmaction2" / "demo.mp4").write_bytes(b"x")
    assert e2e.find_video(None, str(venv / "bin" / "python")) == str(venv / "share" / "mmaction2" / "demo.mp4")
    with pytest.raises(ValueError, match="does not exist"):
        e2e.find_video(str(tmp_path / "nope.mp4"))


def test_a_broken_mmaction2_venv_is_reported_and_ours_still_timed(tmp_path):
    """Full-mode flow with a venv whose Python fails: the section names the failure and times our side anyway."""
    from nonlocal_zoo.benchmark.config import FULL

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho broken venv >&2\nexit 3\n")
    fake.chmod(0o755)
    cfg = {**FULL, "threads": 2, "matmul_size": 128, "mmaction2_python": str(fake), "e2e_video": None,
           "e2e": {**FULL["e2e"], "preset": "demo", "weights": "auto", "video": "rendered", "repeats": 1,
                   "phase_repeats": 1}}
    r = e2e.bench_e2e(cfg, lambda m: None)
    assert r["mmaction2"]["skipped"].startswith(f"failed with {fake}") and "broken venv" in r["mmaction2"]["skipped"]
    assert "mmaction2" not in r["times"] and r["times"]["ours float32"]["runs"] == 1


def test_mmaction2_script_refuses_missing_files(tmp_path):
    """The mmaction2-side script names the missing file (it runs without mmaction2 installed up to that point)."""
    proc = subprocess.run([sys.executable, e2e.SCRIPT, "time", "--video", str(tmp_path / "none.mp4"),
                           "--checkpoint", "x.pth"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "none.mp4" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(e2e.find_mmaction2_python()[0] is None, reason="no mmaction2 venv (scripts/setup_mmaction2_venv.sh)")
def test_same_checkpoint_same_scores_as_mmaction2(tmp_path):
    """Cross-implementation check behind the e2e timing: mmaction2's own recognizer (its shipped I3D-NL5 embedded
    config, drawn and calibrated) and ours loaded from its checkpoint score a real video alike, 1 clip x 1 crop."""
    import json

    import numpy as np

    from nonlocal_zoo.inference import classify, load_model

    python, _ = e2e.find_mmaction2_python()
    video = e2e.find_video(None, python)
    if video is None:
        from nonlocal_zoo.demo import SIZE
        from nonlocal_zoo.synthetic import render_clip, write_clip

        frames = render_clip("approaching", num_frames=80, size=SIZE, seed=[3, 1])
        video = write_clip(str(tmp_path / "clip.mp4"), np.repeat(np.repeat(frames, 4, axis=1), 4, axis=2), fps=25)
    checkpoint = str(tmp_path / "i3d_nl.pth")
    e2e.make_checkpoint(python, video, checkpoint, num_clips=1, num_crops=1)
    proc = subprocess.run([python, e2e.SCRIPT, "time", "--video", video, "--checkpoint", checkpoint, "--num-clips",
                           "1", "--num-crops", "1", "--warmup", "0", "--repeats", "1"], capture_output=True, text=True,
                          timeout=900, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    theirs = np.asarray(e2e._json_lines(proc.stdout)[-1]["scores"])
    clf = load_model(e2e.PRESET, weights=checkpoint, format="mmaction2_pth")
    (row,) = classify(clf, [video], top_k=clf.num_classes, num_clips=1, num_crops=1, on_error="raise")
    ours = np.zeros(clf.num_classes)
    for item in row["top"]:
        ours[item["index"]] = item["score"]
    assert theirs.max() > 0.05  # far from uniform: the comparison means something
    assert ours.argmax() == theirs.argmax()
    np.testing.assert_allclose(ours, theirs, atol=5e-4), json.dumps({"max": float(np.abs(ours - theirs).max())})
