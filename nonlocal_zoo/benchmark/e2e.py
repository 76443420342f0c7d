"""The `e2e` section: `classify` of one real video end to end against mmaction2's `inference_recognizer`, same
checkpoint, same views (issue 16).

Full run: mmaction2's demo clip (`demo/demo.mp4`, a Kinetics video, 340x256, 280 frames), I3D-NL5 R50 32x2 with
embedded-Gaussian non-local blocks in the mmaction2 flavour, 2 clips x 3 crops of 256.

- mmaction2 runs in its own virtual environment, as a user installs it (`scripts/setup_mmaction2_venv.sh`): its
  Python is `mmaction2_python=` / `$NONLOCAL_ZOO_MMACTION2_PYTHON` / the setup script's default
  `/work/venvs/mmaction2/bin/python`. The section is skipped with a message naming these when it is absent.
- Same checkpoint: there is no internet, so mmaction2 builds its own recognizer from the config it ships, draws and
  calibrates it (`e2e_mmaction2.py checkpoint`) and saves it in its checkpoint format; we load that file through our
  converter (`weights=..., format="mmaction2_pth"` on the matching preset). Same views: both sides score the clip
  and the largest difference of the aggregated probabilities is reported before any timing.
- Timing: mmaction2's recognizer stays loaded in a server process (`e2e_mmaction2.py serve`), ours in this one;
  after one warm-up call each, one call of each in turn per round (mmaction2, ours float32, ours bfloat16), medians
  of wall and CPU seconds. Model loading is outside the timings on both sides.
- Where our time goes: decoding + views, normalisation and the network's forward pass timed apart, the forward's
  GFLOP/s (analytic MACs, `nonlocal_zoo.models.flops`) against the machine's sustained matmul peak (back-to-back
  products lasting about one call, median against median; the best single product is reported beside it).

Quick mode (CI): the same code path on the `demo` preset and a rendered clip, float32 and bfloat16 (where the CPU
has it); the mmaction2 side is only located (reported as found or as absent, with the message).

Example:
    $ NONLOCAL_ZOO_MMACTION2_PYTHON=/work/venvs/mmaction2/bin/python \\
        nonlocal-zoo benchmark --sections machine e2e --output /tmp/e2e.md
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from nonlocal_zoo.benchmark.timing import median

PYTHON_ENV = "NONLOCAL_ZOO_MMACTION2_PYTHON"
VIDEO_ENV = "NONLOCAL_ZOO_E2E_VIDEO"
DEFAULT_VENV = "/work/venvs/mmaction2"  # scripts/setup_mmaction2_venv.sh's default
PRESET = "i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded"
PREFIX = "E2E_MMACTION2 "
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e_mmaction2.py")


def find_mmaction2_python(python=None):
    """`(python, None)` for a usable mmaction2 venv Python, else `(None, why)`.

    Looks at `python`, then `$NONLOCAL_ZOO_MMACTION2_PYTHON`, then the setup script's default venv.
    """
    candidates = [("argument", python), (PYTHON_ENV, os.environ.get(PYTHON_ENV)),
                  ("default venv", os.path.join(DEFAULT_VENV, "bin", "python"))]
    for where, path in candidates:
        if not path:
            continue
        if not os.path.isfile(path):
            if where == "default venv":
                break
            return None, f"the mmaction2 Python given by {where} does not exist: {path!r}"
        return path, None
    return None, (f"no mmaction2 venv: create one with `bash scripts/setup_mmaction2_venv.sh [DIR]` and name its Python "
                  f"with ${PYTHON_ENV} or mmaction2_python= (default {DEFAULT_VENV}/bin/python)")


def find_video(video=None, mmaction2_python=None):
    """The demo clip: `video`, `$NONLOCAL_ZOO_E2E_VIDEO`, or `share/mmaction2/demo.mp4` inside the mmaction2 venv
    (where the setup script copies it); None when none exists."""
    for path in (video, os.environ.get(VIDEO_ENV)):
        if path:
            if not os.path.isfile(path):
                raise ValueError(f"The e2e video does not exist. Received: {path!r}")
            return path
    if mmaction2_python:
        path = os.path.join(os.path.dirname(os.path.dirname(mmaction2_python)), "share", "mmaction2", "demo.mp4")
        if os.path.isfile(path):
            return path
    return None


def _mmaction2_env():
    # the mmaction2 venv must not see our site-packages or TensorFlow settings
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _json_lines(text):
    return [json.loads(line[len(PREFIX):]) for line in text.splitlines() if line.startswith(PREFIX)]


def make_checkpoint(python, video, out, *, num_clips, num_crops, timeout=900):
    """mmaction2's seeded, calibrated recognizer saved as an mmaction2 checkpoint at `out` (see the module doc)."""
    proc = subprocess.run([python, SCRIPT, "checkpoint", "--video", video, "--out", out, "--num-clips",
                           str(num_clips), "--num-crops", str(num_crops)], capture_output=True, text=True,
                          env=_mmaction2_env(), timeout=timeout)
    lines = _json_lines(proc.stdout)
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"mmaction2 checkpoint failed: {tail[-1] if tail else proc.returncode}")
    return lines[-1]


class MMAction2Server:
    """mmaction2's recognizer loaded in its venv's Python; `call()` runs one timed `inference_recognizer`."""

    def __init__(self, python, video, checkpoint, *, num_clips, num_crops, threads, timeout=900):
        self._log = tempfile.TemporaryFile(mode="w+")
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [python, SCRIPT, "serve", "--video", video, "--checkpoint", checkpoint, "--num-clips", str(num_clips),
             "--num-crops", str(num_crops), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=_mmaction2_env())
        self.info = self._read()

    def _read(self):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self._log.seek(0)
                tail = self._log.read().strip().splitlines()
                raise RuntimeError(f"the mmaction2 process ended: {tail[-1] if tail else self.proc.poll()}")
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX):])
        raise RuntimeError(f"the mmaction2 process gave no answer in {self.timeout} s")

    def call(self):
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def _summary(wall, cpu):
    return {"median_s": median(wall), "min_s": float(min(wall)), "cpu_median_s": median(cpu), "runs": len(wall)}


def _scores(results):
    """The aggregated probabilities `(C,)` from `classify`'s top list of every class."""
    (row,) = results
    if "error" in row:
        raise RuntimeError(f"classify failed on {row['video']}: {row['error']}")
    scores = np.zeros(len(row["top"]))
    for item in row["top"]:
        scores[item["index"]] = item["score"]
    return scores


def _phases(clf, video, *, num_clips, num_crops, repeats, batch_size, matmuls, sustained):
    """Median wall/CPU seconds of the pieces of `classify` (decoding + views, normalisation, forward passes), each
    repeat followed by the sustained matmuls of `sustained` (one call each: back-to-back products lasting about one
    forward pass) and the single products of `matmuls` (3 calls each), so that the forward's rate is compared with
    the peak measured in the same minutes."""
    out = {"views": ([], []), "normalize": ([], []), "forward": ([], [])}
    mm = {name: ([], []) for name in matmuls}
    long = {name: ([], []) for name in sustained}
    pre = clf.preprocessor
    for _ in range(repeats):
        views, w, c = _timed(lambda: pre.video_views(video, num_clips=num_clips, num_crops=num_crops))
        out["views"][0].append(w), out["views"][1].append(c)
        x, w, c = _timed(lambda: pre.normalize(views))
        out["normalize"][0].append(w), out["normalize"][1].append(c)
        _, w, c = _timed(lambda: clf.view_scores(x, batch_size=batch_size))
        out["forward"][0].append(w), out["forward"][1].append(c)
        for name, fn in sustained.items():
            _, w, c = _timed(fn)
            long[name][0].append(w), long[name][1].append(c)
        for name, fn in matmuls.items():
            for _ in range(3):
                _, w, c = _timed(fn)
                mm[name][0].append(w), mm[name][1].append(c)
    phases = {k: {"median_s": median(v[0]), "cpu_median_s": median(v[1])} for k, v in out.items()}
    return (phases, tuple(x.shape), {name: _summary(*v) for name, v in mm.items()},
            {name: _summary(*v) for name, v in long.items()})


def bench_e2e(cfg, log):
    """The end-to-end comparison (see the module docstring); returns the section's results dict."""
    from nonlocal_zoo.inference import classify, load_model
    from nonlocal_zoo.models.flops import count_macs
    from nonlocal_zoo.tasks import precision

    e2e = cfg["e2e"]
    num_clips, num_crops = e2e["num_clips"], e2e["num_crops"]
    python, why = find_mmaction2_python(cfg.get("mmaction2_python"))
    result = {"preset": e2e["preset"], "views": f"{num_clips}x{num_crops}", "threads": cfg["threads"]}
    folder = tempfile.mkdtemp(prefix="nonlocal_zoo_e2e_")
    server = None
    try:
        video = find_video(cfg.get("e2e_video"), python) if e2e["video"] == "demo.mp4" else None
        if e2e["video"] == "rendered":
            from nonlocal_zoo.demo import SIZE
            from nonlocal_zoo.synthetic import render_clip, write_clip

            video = write_clip(os.path.join(folder, "clip.mp4"),
                               render_clip("moving_left", num_frames=24, size=SIZE, seed=[7, 0]), fps=8)
        if video is None:
            msg = (f"skipped: mmaction2's demo clip not found (pass e2e_video= / ${VIDEO_ENV}, or give the setup "
                   "script the clip)")
            log(f"e2e: {msg}")
            return {**result, "skipped": msg}
        result["video"] = os.fspath(video)
        checkpoint = None
        if python is None:
            result["mmaction2"] = {"skipped": why}
        elif not e2e["compare"]:
            result["mmaction2"] = {"skipped": f"found {python}; the comparison (a full-size I3D-NL5 R50 on both "
                                   "sides) runs in the full benchmark only"}
        else:
            log("e2e: mmaction2 builds, calibrates and saves its recognizer ...")
            checkpoint = os.path.join(folder, "i3d_nl5_embedded_gaussian_mmaction2.pth")
            try:
                made = make_checkpoint(python, video, checkpoint, num_clips=num_clips, num_crops=num_crops)
                server = MMAction2Server(python, video, checkpoint, num_clips=num_clips, num_crops=num_crops,
                                         threads=cfg["threads"])
                result["mmaction2"] = {"python": python, "checkpoint_tensors": made["tensors"],
                                       "init_s": server.info["init_s"], "versions": server.info["versions"]}
            except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as error:  # ours still runs
                if server is not None:
                    server.close()
                server, checkpoint = None, None
                result["mmaction2"] = {"skipped": f"failed with {python}: {error}"}
        if result.get("mmaction2", {}).get("skipped"):
            log(f"e2e: mmaction2 side {result['mmaction2']['skipped']}")
        weights = checkpoint if checkpoint else e2e["weights"]
        t = time.perf_counter()
        models = {"float32": load_model(e2e["preset"], weights=weights,
                                        format="mmaction2_pth" if checkpoint else None)}
        result["load_s"] = time.perf_counter() - t
        supported, what = precision.bf16_support()
        if supported:
            models["bfloat16"] = models["float32"].with_dtype("bfloat16")
        else:
            result["bfloat16_skipped"] = f"no bfloat16 hardware ({what})"

        def ours(clf):
            return classify(clf, [video], top_k=clf.num_classes, num_clips=num_clips, num_crops=num_crops,
                            on_error="raise")

        fns = {f"ours {dtype}": (lambda m=m: _scores(ours(m))) for dtype, m in models.items()}
        if server is not None:
            fns = {"mmaction2": lambda: np.asarray(server.call()["scores"]), **fns}
        scores = {name: fn() for name, fn in fns.items()}  # warm-up: tracing, allocators, decoder caches
        wall = {name: [] for name in fns}
        cpu = {name: [] for name in fns}
        for _ in range(e2e["repeats"]):
            for name, fn in fns.items():
                if name == "mmaction2":
                    call = server.call()  # timed inside the mmaction2 process, around inference_recognizer
                    w, c = call["wall_s"], call["cpu_s"]
                else:
                    _, w, c = _timed(fn)
                wall[name].append(w), cpu[name].append(c)
        result["times"] = {name: _summary(wall[name], cpu[name]) for name in fns}
        ref = scores.get("mmaction2")
        result["agreement"] = {}
        for dtype in models:
            mine = scores[f"ours {dtype}"]
            base = ref if ref is not None else scores["ours float32"]
            result["agreement"][dtype] = {
                "against": "mmaction2" if ref is not None else "ours float32",
                "max_abs_prob_diff": float(np.abs(mine - base).max()),
                "top1_same": bool(mine.argmax() == base.argmax()),
                "top5_same": bool(set(np.argsort(mine)[-5:]) == set(np.argsort(base)[-5:])),
                "top1": int(mine.argmax()), "top1_prob": float(mine.max())}
        if ref is not None:
            mm = result["times"]["mmaction2"]
            result["speedup"] = {dtype: mm["median_s"] / result["times"][f"ours {dtype}"]["median_s"]
                                 for dtype in models}
            result["cpu_speedup"] = {dtype: mm["cpu_median_s"] / result["times"][f"ours {dtype}"]["cpu_median_s"]
                                     for dtype in models}
        # where our time goes, per dtype, against the matmul peak of the same minutes
        from nonlocal_zoo.benchmark.machine import (matmul_callables, matmul_rates, sustained_matmul_callables,
                                                    sustained_rates)

        n = cfg["matmul_size"]
        result["phases"], result["matmul"], result["sustained"] = {}, {}, {}
        for dtype, clf in models.items():
            matmuls = matmul_callables(n, (dtype,))
            for fn in matmuls.values():
                fn()
            # the sustained matmul lasts about one `classify` call (the forward is ~95% of it)
            sustained, products = sustained_matmul_callables(n, result["times"][f"ours {dtype}"]["median_s"], (dtype,))
            phases, shape, mm_times, long_times = _phases(
                clf, video, num_clips=num_clips, num_crops=num_crops, repeats=e2e["phase_repeats"],
                batch_size=e2e["batch_size"], matmuls=matmuls, sustained=sustained)
            burst = result["matmul"][dtype] = matmul_rates(mm_times, n, (dtype,))
            peak = result["sustained"][dtype] = sustained_rates(long_times, n, products, (dtype,))
            macs = count_macs(clf.backbone.arch, shape[1:])["total"] * shape[0]
            fwd = phases["forward"]
            fwd["gflops"] = 2 * macs / fwd["median_s"] / 1e9
            fwd["gflops_per_cpu_s"] = 2 * macs / fwd["cpu_median_s"] / 1e9
            # against the peaks interleaved with the forward passes above: sustained (median against median) and
            # the best single product (burst)
            fwd["fraction_of_peak"] = fwd["gflops"] / peak[f"peak_{dtype}"]
            fwd["fraction_of_burst_peak"] = fwd["gflops"] / burst[f"peak_{dtype}"]
            fwd["fraction_of_peak_per_cpu_s"] = fwd["gflops_per_cpu_s"] / peak[f"peak_{dtype}_per_cpu_s"]
            phases["gmacs"] = macs / 1e9
            result["phases"][dtype] = phases
        for name, t in result["times"].items():
            log(f"e2e {name}: {t['median_s']:.2f} s (CPU {t['cpu_median_s']:.2f} s)")
        return result
    finally:
        if server is not None:
            server.close()
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def render_e2e(results):
    """Markdown lines of the `e2e` section."""
    r = results["e2e"]
    out = ["## End to end: `classify` vs mmaction2 `inference_recognizer` (one video, same checkpoint, same views)",
           ""]
    if r.get("skipped"):
        return out + [f"Skipped: {r['skipped']}.", ""]
    mm = r.get("mmaction2", {})
    out += [f"Video `{os.path.basename(r['video'])}`, preset `{r['preset']}`, {r['views']} views (clips x crops), "
            f"{r['threads']} threads on both sides; model loading excluded; medians of interleaved calls after one "
            "warm-up each. **speed-up = mmaction2 time / our time**.", ""]
    if mm.get("skipped"):
        out += [f"mmaction2 side: {mm['skipped']}.", ""]
    else:
        v = mm["versions"]
        out += [f"mmaction2 {v['mmaction2']} (mmengine {v['mmengine']}, mmcv {v['mmcv']}, torch {v['torch']}, "
                f"{v['threads']} threads), `{mm['python']}`.", ""]
    out += ["| side | dtype | wall s | CPU s | speed-up (wall) | speed-up (CPU) | max abs dp | top-1 same | "
            "top-5 same |", "|---" * 9 + "|"]
    for name, t in r["times"].items():
        dtype = name.split()[-1] if name != "mmaction2" else "float32"
        agree = r["agreement"].get(dtype, {}) if name != "mmaction2" else {}
        speed = r.get("speedup", {}).get(dtype) if name != "mmaction2" else None
        cpu_speed = r.get("cpu_speedup", {}).get(dtype) if name != "mmaction2" else None
        out.append(f"| {name.split()[0]} | {dtype} | {t['median_s']:.2f} | {t['cpu_median_s']:.2f} | "
                   + (f"{speed:.2f}x" if speed else "") + " | " + (f"{cpu_speed:.2f}x" if cpu_speed else "")
                   + " | " + (f"{agree['max_abs_prob_diff']:.1e} (vs {agree['against']})" if agree else "")
                   + " | " + (str(agree.get("top1_same", "")) if agree else "") + " | "
                   + (str(agree.get("top5_same", "")) if agree else "") + " |")
    out += ["", "Our time by phase (medians; the forward's GFLOP/s from the analytic MAC count):", "",
            "| dtype | views (decode, resize, crops) s | normalise s | forward s | forward CPU s | GMACs | "
            "GFLOP/s | sustained matmul GFLOP/s (interleaved, median) | % of sustained peak | best burst matmul "
            "GFLOP/s | % of burst | % of the sustained matmul's rate per CPU-second |", "|---" * 12 + "|"]
    for dtype, p in r["phases"].items():
        f = p["forward"]
        peak, burst = r["sustained"][dtype], r["matmul"][dtype]
        out.append(f"| {dtype} | {p['views']['median_s']:.2f} | {p['normalize']['median_s']:.2f} | "
                   f"{f['median_s']:.2f} | {f['cpu_median_s']:.2f} | {p['gmacs']:.0f} | {f['gflops']:.0f} | "
                   f"{peak['peak_' + dtype]:.0f} | {100 * f['fraction_of_peak']:.0f} | {burst['peak_' + dtype]:.0f} | "
                   f"{100 * f['fraction_of_burst_peak']:.0f} | {100 * f['fraction_of_peak_per_cpu_s']:.0f} |")
    if r.get("bfloat16_skipped"):
        out += ["", f"bfloat16: {r['bfloat16_skipped']}."]
    out.append("")
    return out


if __name__ == "__main__":
    sys.exit("run the section with `nonlocal-zoo benchmark --sections machine e2e`")
