"""Beam throughput benchmark (issue 14): `python -m benchmarks.beam_throughput [--clips 24] [--model demo] [--json F]`.

Generates once (cached in `--workdir`, default `$TMPDIR/nonlocal_zoo_beam_throughput/`) `--clips` synthetic clips
(`nonlocal_zoo.synthetic.render_clip`, the demo model's motion classes, `--size` pixels square, `--frames` frames at
8 fps, MPEG-4 part 2 `.mp4` from `write_clip`), a folder holding exactly them and one holding the first `--small`,
then times, for each job (`classify`, `features`), three ways of running the same command line on the same folder:

1. **single**: `nonlocal-zoo classify|features VIDEOS...` without `--runner` (the single-process command),
2. **beam1**: the same with `--runner DirectRunner --direct_running_mode multi_processing --direct_num_workers 1`,
3. **beam2**: the same with `--direct_num_workers 2`.

Each is a fresh subprocess (`python -m nonlocal_zoo.cli ...`), so the wall time includes everything a user waits for:
imports, model loading, pipeline construction and start, worker processes, decoding, the forward passes, the
output files. CPU time is the children's `getrusage` (the Beam workers are waited for, so theirs is included). The
three are run interleaved (single, beam1, beam2, single, ...), `--repeats` times, medians reported.

Both folder sizes are timed, so the report also gives the *marginal* throughput, `(N - n) / (t_N - t_n)`: the rate at
which a warm worker pool consumes videos once started, which is what a long Dataflow job pays for, and the fixed start
cost `t_n - n / rate`. The outputs of the three are compared (classify: every class score of every video, `--top-k`
= the number of classes; features: every feature row), so a fast wrong answer cannot pass.

`--weights none` (a full-size preset with random weights) saves the random model once as a preset directory in the
workdir, and every variant loads that folder, so that all of them run the same weights.

Not part of `benchmarks.run --quick`: a Beam pipeline alone takes 20-60 s to start on the 2-core CI machine (imports
and a model load in every worker process), more than the quick mode's whole budget.

Prints a JSON report (also written with `--json`).
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import common

VARIANTS = ("single", "beam1", "beam2")
JOBS = ("classify", "features")


def make_clips(folder, count, size, frames, seed=0):
    """`count` clips `v000.mp4`... of the synthetic classes in `folder` (kept when they already exist)."""
    from nonlocal_zoo.synthetic import CLASSES, render_clip, write_clip

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"v{i:03d}.mp4")
        if not os.path.exists(path):
            tmp = os.path.join(folder, f".tmp{i:03d}.mp4")
            write_clip(tmp, render_clip(i % len(CLASSES), num_frames=frames, size=size, seed=(seed, i)), fps=8)
            os.replace(tmp, path)
        paths.append(path)
    return paths


def _folder_of(paths, folder):
    """`folder` holding exactly the videos `paths` (hard links, or copies across filesystems): (folder, its paths)."""
    os.makedirs(folder, exist_ok=True)
    names = [os.path.basename(p) for p in paths]
    for name in set(os.listdir(folder)) - set(names):  # the Beam variants read the whole folder
        os.remove(os.path.join(folder, name))
    for path, name in zip(paths, names):
        target = os.path.join(folder, name)
        if not os.path.exists(target):
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
    return folder, [os.path.join(folder, name) for name in names]


def _command(job, variant, paths, folder, out, args):
    cli = [sys.executable, "-m", "nonlocal_zoo.cli", job]
    model = ["--model", args.model, "--weights", args.weights]
    if job == "classify":
        extra = ["--num-clips", str(args.num_clips), "--num-crops", str(args.num_crops), "--top-k",
                 str(args.top_k), "--json"]
    else:
        extra = ["--out", out, "--batch-size", str(args.batch_size)] + (
            ["--stride", str(args.stride)] if args.stride else [])
    if variant == "single":
        return cli + list(paths) + model + extra + (["--no-resume"] if job == "features" else [])
    workers = {"beam1": 1, "beam2": 2}[variant]
    beam = ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing", "--direct_num_workers",
            str(workers), "--batch-size", str(args.batch_size)]
    return cli + [folder] + model + extra + beam + (["--out", out] if job == "classify" else [])


def _run(cmd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.stdout, wall, cpu


def _classify_scores(job_out, variant, stdout):
    """{basename: scores ordered by class index} of a classify run."""
    if variant == "single":
        rows = json.loads(stdout)
    else:
        rows = []
        for name in sorted(os.listdir(job_out)):
            if name.startswith("predictions-"):
                with open(os.path.join(job_out, name)) as f:
                    rows += [json.loads(line) for line in f if line.strip()]
        with open(os.path.join(job_out, "dead_letter.jsonl")) as f:
            dead = f.read().strip()
        if dead:
            raise RuntimeError(f"dead letters: {dead[:500]}")
    out = {}
    for row in rows:
        if "error" in row:
            raise RuntimeError(f"{row['video']}: {row['error']}")
        scores = np.zeros(len(row["top"]))
        for entry in row["top"]:
            scores[entry["index"]] = entry["score"]
        out[os.path.basename(row["video"])] = scores
    return out


def _features(job_out):
    from nonlocal_zoo.features import load_features

    return {name[:-4]: load_features(os.path.join(job_out, name))["features"]
            for name in sorted(os.listdir(job_out)) if name.endswith(".npz")}


def _max_diff(reference, other, what):
    if sorted(reference) != sorted(other):
        raise RuntimeError(f"{what}: videos differ: {sorted(set(reference) ^ set(other))[:5]}")
    return max(float(np.abs(reference[k] - other[k]).max()) for k in reference)


def bench(args, folders):
    """Interleaved timings of the variants on both folders; returns the per-job report."""
    report = {}
    work = os.path.join(args.workdir, "out")
    for job in args.jobs:
        times = {(v, n): [] for v in VARIANTS for n in folders}
        diffs = {v: 0.0 for v in VARIANTS[1:]}
        for repeat in range(args.repeats):
            for n, (folder, paths) in folders.items():
                reference = None
                for variant in VARIANTS:
                    job_out = os.path.join(work, f"{job}_{variant}_{n}")
                    shutil.rmtree(job_out, ignore_errors=True)
                    stdout, wall, cpu = _run(_command(job, variant, paths, folder, job_out, args))
                    times[variant, n].append((wall, cpu))
                    print(f"{job} {variant} {n} clips (repeat {repeat}): {wall:.1f} s wall, {cpu:.1f} s CPU",
                          file=sys.stderr, flush=True)
                    result = _classify_scores(job_out, variant, stdout) if job == "classify" else _features(job_out)
                    if len(result) != n:
                        raise RuntimeError(f"{job} {variant}: {len(result)} of {n} videos came out")
                    if reference is None:
                        reference = result
                    else:
                        diffs[variant] = max(diffs[variant], _max_diff(reference, result, f"{job} {variant}"))
        small, large = sorted(folders)
        size_mb = sum(os.path.getsize(p) for p in folders[large][1]) / 1e6
        job_report = {"max_abs_diff_vs_single": diffs}
        for variant in VARIANTS:
            wall = {n: float(np.median([t[0] for t in times[variant, n]])) for n in folders}
            cpu = {n: float(np.median([t[1] for t in times[variant, n]])) for n in folders}
            marginal = (large - small) / (wall[large] - wall[small]) if wall[large] > wall[small] else float("nan")
            job_report[variant] = {
                "wall_s": {str(n): wall[n] for n in folders}, "cpu_s": {str(n): cpu[n] for n in folders},
                "all_wall_s": {str(n): [t[0] for t in times[variant, n]] for n in folders},
                "videos_per_s": large / wall[large], "mb_per_s": size_mb / wall[large],
                "marginal_videos_per_s": marginal, "marginal_mb_per_s": marginal * size_mb / large,
                "start_s": wall[small] - small / marginal if marginal == marginal else float("nan"),
                "cpu_s_per_video_marginal": (cpu[large] - cpu[small]) / (large - small)}
        base = job_report["single"]
        for variant in VARIANTS[1:]:
            v = job_report[variant]
            v["speed_vs_single"] = v["videos_per_s"] / base["videos_per_s"]
            v["marginal_speed_vs_single"] = v["marginal_videos_per_s"] / base["marginal_videos_per_s"]
        job_report["beam2_vs_beam1"] = job_report["beam2"]["videos_per_s"] / job_report["beam1"]["videos_per_s"]
        job_report["beam2_vs_beam1_marginal"] = (job_report["beam2"]["marginal_videos_per_s"]
                                                 / job_report["beam1"]["marginal_videos_per_s"])
        report[job] = job_report
    return report


def machine():
    import apache_beam
    import keras
    import tensorflow as tf

    return common.machine(tensorflow=tf.__version__, keras=keras.__version__, apache_beam=apache_beam.__version__)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=24, help="videos in the large folder (default: 24)")
    p.add_argument("--small", type=int, default=4, help="videos in the small folder (default: 4)")
    p.add_argument("--size", type=int, default=256, help="frame height and width (default: 256)")
    p.add_argument("--frames", type=int, default=64, help="frames per clip, at 8 fps (default: 64)")
    p.add_argument("--model", default="demo", help="model of both jobs (default: demo)")
    p.add_argument("--weights", default="auto",
                   help="'auto' or 'none' (random weights, saved once as a preset directory that all variants load)")
    p.add_argument("--num-clips", type=int, default=2, help="classify: temporal views (default: 2)")
    p.add_argument("--num-crops", type=int, default=3, help="classify: crops per view (default: 3)")
    p.add_argument("--top-k", type=int, default=12, help="classify: = the model's classes, so all are compared")
    p.add_argument("--stride", type=int, default=None, help="features: frames between windows (default: span)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "nonlocal_zoo_beam_throughput"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not 1 <= args.small < args.clips:
        p.error(f"--small must be in [1, --clips). Received: --small {args.small} --clips {args.clips}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    report = {"command": "python -m benchmarks.beam_throughput " + " ".join(argv if argv is not None else
                                                                             sys.argv[1:]),
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "machine_before": machine()}
    pool = make_clips(os.path.join(args.workdir, f"pool_{args.size}px_{args.frames}f"), args.clips, args.size,
                      args.frames)
    folders = {n: _folder_of(pool[:n], os.path.join(args.workdir, f"clips_{args.size}px_{args.frames}f_n{n}"))
               for n in (args.clips, args.small)}
    source, paths = folders[args.clips]
    report["videos"] = {"folder": source, "clips": args.clips, "small": args.small, "size": args.size,
                        "frames": args.frames, "fps": 8, "codec": "MPEG-4 part 2 (OpenCV mp4v)",
                        "mb": sum(os.path.getsize(q) for q in paths) / 1e6}
    if args.weights in ("none", "None"):  # random weights: one saved copy, so that every process runs the same model
        from nonlocal_zoo.inference import load_model

        folder = os.path.join(args.workdir, f"{args.model}_random")
        if not os.path.exists(os.path.join(folder, "config.json")):
            load_model(args.model, weights=None).save_to_preset(folder)
        report["model_dir"] = folder
        args.model, args.weights = folder, "auto"
    report["settings"] = {k: getattr(args, k) for k in ("model", "weights", "num_clips", "num_crops", "stride",
                                                        "batch_size", "repeats")}
    report["results"] = bench(args, folders)
    report["machine_after"] = {"load_average": os.getloadavg()}
    text = json.dumps(report, indent=2, default=float)
    print(text)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
