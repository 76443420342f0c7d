"""The `nonlocal-zoo` command line: argument parsing and dispatch only; the work is done by the library.

Exit codes: 0 success, 1 failure of the environment (download, offline without the file, disk), 2 a usage mistake
(bad argument, unknown model, unreadable video), 130 interrupted. Mistakes print one line, `error: ...`, without a
traceback; `--debug` shows the traceback.

Example:
    $ nonlocal-zoo demo
    $ nonlocal-zoo classify clip.mp4 --model i3d_nl5_r50_8x8_kinetics400 --top-k 5
    $ nonlocal-zoo attention clip.mp4 --model demo --query 4,32,32 --out attention/
    $ nonlocal-zoo features videos/ --model demo --stride 4 --out feats/
    $ nonlocal-zoo features 'gs://bucket/videos/*.mp4' --model demo --out gs://bucket/feats/ --runner DataflowRunner \
          --project my-project --region europe-west1 --temp_location gs://bucket/tmp -- --labels team=video
    $ nonlocal-zoo timeline match.mp4 --model demo --top-k 3 --out timeline/ --annotate
"""
import argparse
import json
import os
import sys

from nonlocal_zoo.presets import MAX_TEST_CLIPS  # temporal views per video (the registry is cheap to import)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# Options of `classify`/`features` that Beam's pipeline options (apache-beam 2.77) also define: with --runner the
# command keeps them (`--runner` is then passed on to Beam), so Beam's are given after a bare `--`
# (tests/test_cli.py compares this with Beam's options; docs/scale_out.md lists them).
BEAM_NAMESAKES = ("--labels", "--runner")
_DEBUG = False  # set by --debug

MODEL_HELP = ("'demo' (the embedded motion model), a preset name (see `nonlocal-zoo list`), a preset directory "
              "(e.g. a fine-tuning run's output), a saved .keras model or hf://org/repo")
WEIGHTS_HELP = ("weights of a preset: 'auto' (its published Kinetics-400 checkpoint, converted and cached on first "
                "use), 'none' (random), a weights file or hf://org/repo (default: auto)")


class UsageError(ValueError):
    """A mistake in the command line (exit code 2)."""


def _print_json(value):
    print(json.dumps(value, indent=2, default=float))


def _quiet_tensorflow():
    """Imports TensorFlow (and probes its devices) with the C++ start-up chatter kept off the terminal.

    TensorFlow's native libraries log to file descriptor 2 before `TF_CPP_MIN_LOG_LEVEL` applies ("oneDNN custom
    operations are on", "failed call to cuInit" on machines without a GPU); `--debug` shows it.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _DEBUG or "tensorflow" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# ---------------------------------------------------------------------------------------------------- handlers
def _cmd_list(args):
    from nonlocal_zoo.presets import get_preset, list_models

    names = list_models(pretrained=args.pretrained)
    if args.json:
        _print_json(names)
        return EXIT_OK
    for name in names:
        meta = get_preset(name)["metadata"]
        top1 = meta.get("top1")
        acc = f"top-1 {top1:.1f}" if top1 is not None else "architecture only"
        print(f"{name:48s} {acc}")
    print("demo" + " " * 44 + "embedded motion model (offline; `nonlocal-zoo demo`)")
    return EXIT_OK


def _cmd_info(args):
    if args.name == "demo":
        from nonlocal_zoo.demo import format_demo_info

        print(format_demo_info())
        return EXIT_OK
    from nonlocal_zoo.models.flops import format_info

    print(format_info(args.name))
    return EXIT_OK


def _load(args):
    """The VideoClassifier named by `--model` (+ `--weights`, `--preset`, `--labels`): the one resolver."""
    from nonlocal_zoo.inference import load_model

    return load_model(args.model, weights=getattr(args, "weights", "auto"), preset=getattr(args, "preset", None),
                      labels=getattr(args, "labels", None), dtype=getattr(args, "dtype", None))


def _check_video_path(path):
    """A cheap check of a video argument before TensorFlow is imported: it must be an existing regular file."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"No such video file: {path!r}") from None
    except OSError as error:
        raise UsageError(f"Cannot read video file {path!r}: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{path!r} is a directory, not a video file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else (
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise UsageError(f"{path!r} is {kind}, not a video file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"Cannot read video file {path!r}: permission denied")


def _check_model_arg(args):
    """Cheap checks of `--model`/`--weights`/`--labels` before TensorFlow is imported."""
    from nonlocal_zoo.presets import PRESETS

    model = args.model
    if model not in PRESETS and not model.startswith("hf://") and not os.path.exists(model):
        import difflib

        close = difflib.get_close_matches(model, ["demo", *PRESETS], n=3, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else " See `nonlocal-zoo list`."
        raise UsageError(f"Unknown preset: not a preset name, a preset directory or an existing .keras file.{hint} "
                         f"Received: --model {model!r}")
    weights = getattr(args, "weights", "auto")
    if weights not in (None, "auto", "none", "None", "kinetics400") and not str(weights).startswith("hf://") and \
            not os.path.exists(weights):
        raise UsageError(f"No such weights file: {weights!r} (expected auto, none, kinetics400, a file or hf://)")
    labels = getattr(args, "labels", None)
    if labels is not None and not os.path.isfile(labels):
        raise UsageError(f"No such labels file: {labels!r}")


def _cmd_classify(args):
    if args.runner is not None:
        return _cmd_beam(args, "classify", args.videos, top_k=args.top_k, num_clips=args.num_clips,
                         num_crops=args.num_crops)
    from nonlocal_zoo.inference import classify

    model = _load(args)
    num_clips = 1 if args.num_clips is None else args.num_clips  # one view unless asked (the Beam job: the preset's)
    num_crops = 1 if args.num_crops is None else args.num_crops
    results = classify(model, args.videos, top_k=args.top_k, num_clips=num_clips, num_crops=num_crops)
    failed = [r for r in results if "error" in r]
    if args.json:
        _print_json(results)
    else:
        for result in results:
            if "error" in result:
                print(f"{result['video']}  failed: {result['error']}")
                continue
            print(f"{result['video']}  ({result['views']} view{'s' if result['views'] > 1 else ''})")
            for rank, item in enumerate(result["top"], 1):
                print(f"  {rank}. {item['label']:32s} {item['score']:.3f}")
    for result in failed:
        print(f"error: {result['video']}: {result['error']}", file=sys.stderr)
    return EXIT_FAILURE if failed else EXIT_OK


def _cmd_evaluate(args):
    from nonlocal_zoo.evaluation import evaluate

    model = _load(args)
    generic = [f"class_{i}" for i in range(model.num_classes)]
    class_names = None if list(model.labels) == generic else list(model.labels)
    result = evaluate(model, args.source, num_clips=args.num_clips, num_crops=args.num_crops, split=args.split,
                      data_dir=args.data_dir, batch_size=args.batch_size, class_names=class_names,
                      progress=sys.stderr.isatty() and not args.json)
    summary = {k: v for k, v in result.items() if k not in ("video_scores", "view_scores", "labels", "names")}
    if args.json:
        _print_json(summary)
        return EXIT_OK
    for key in sorted(k for k in summary if k.startswith(("video_top", "clip_top"))):
        print(f"{key:12s} {100 * summary[key]:.2f}%")
    print(f"videos {summary['num_videos']}, views {summary['num_views']} ({summary['views_per_video']} per video, "
          f"{summary['aggregation']} averaging), skipped {summary['num_skipped']}")
    for name, reason in summary.get("skipped", []):
        print(f"  skipped {name}: {reason}")
    return EXIT_OK


def _cmd_finetune(args, *, callbacks=None):
    from nonlocal_zoo.training import finetune

    verbose = "auto" if args.verbose is None else args.verbose
    finetune(args.data, config=args.config, output_dir=args.output_dir, resume=args.resume, overwrite=args.overwrite,
             callbacks=callbacks, verbose=verbose, **finetune_options(args))
    return EXIT_OK


def _cmd_convert(args):
    from nonlocal_zoo.models.conversion import convert_checkpoint

    out = convert_checkpoint(args.source, model=args.model, out=args.out, format=args.format)
    print(f"wrote {out}")
    return EXIT_OK


def _cmd_download(args):
    from nonlocal_zoo.pretrained.loading import download_preset

    path = download_preset(args.name, offline=True if args.offline else None)
    print(path)
    return EXIT_OK


def _cmd_export(args):
    from nonlocal_zoo.export import export_model

    model = _load(args)  # an architecture-only preset needs --weights (`none` for a random export)
    pre = model.preprocessor.config
    model = model.with_clip_shape((pre["num_frames"], pre["train_crop"], pre["train_crop"], 3))  # fixed for TFLite
    out = export_model(model, args.format, args.out, quantization=args.quantization, overwrite=args.overwrite)
    print(f"wrote {out}")
    return EXIT_OK


def _cmd_attention(args):
    from nonlocal_zoo.attention import attention_for_video, parse_query

    query = parse_query(args.query) if args.query is not None else None
    loaded = _load(args)
    att, paths = attention_for_video(loaded, args.video, query=query, block=args.block, out_dir=args.out,
                                     top_k=args.top_k)
    if args.json:
        _print_json({"block": att.block, "mode": att.mode, "query": att.query, "feature_query": att.feature_query,
                     "top_keys": att.top_keys(args.top_k), **paths})
        return EXIT_OK
    t, y, x = att.query
    print(f"block {att.block} ({att.mode}), query t={t} y={y} x={x} -> feature position {att.feature_query} "
          f"of {att.feature_shape}")
    print("strongest keys (weight, t, y, x):")
    for w, kt, ky, kx in att.top_keys(min(args.top_k, 5)):
        print(f"  {w:.4f}  t={kt} y={ky:.0f} x={kx:.0f}")
    print(f"wrote {paths['png']}")
    print(f"wrote {paths['gif']}")
    return EXIT_OK


def _cmd_demo(args):
    from nonlocal_zoo.demo import run_demo

    run_demo(out_dir=args.out, num_clips=args.num_clips, seed=args.seed)
    return EXIT_OK


def _cmd_beam(args, job, sources, **job_kwargs):
    """`classify`/`features` with `--runner`: the Apache Beam pipeline of `nonlocal_zoo.beam` (the remaining command
    line words are Beam's pipeline options)."""
    from nonlocal_zoo.beam import run_pipeline

    options = ["--runner", args.runner, *args.beam_options]
    if not _DEBUG and not any(o.startswith("--default_sdk_harness_log_level") for o in options):
        options.append("--default_sdk_harness_log_level=WARNING")  # the workers' INFO lines drown the summary
    summary = run_pipeline(job, sources, args.out, options=options, model=args.model, weights=args.weights,
                           preset=args.preset, labels=args.labels, dtype=args.dtype, batch_size=args.batch_size,
                           min_batch_size=args.min_batch_size, max_batch_size=args.max_batch_size,
                           large_model=args.large_model, model_copies=args.model_copies, **job_kwargs)
    failed = summary["dead_letter"]
    if args.json:
        _print_json(summary)
    else:
        print(f"{job} on {args.runner}: {summary['state']}, {summary['videos_ok']} video(s) written to "
              f"{args.out}, {len(failed)} failed (see {os.path.join(args.out, 'dead_letter.jsonl')})")
    for record in failed:
        print(f"error: {record['video']}: {record['error']}", file=sys.stderr)
    return EXIT_FAILURE if failed else EXIT_OK


def _cmd_features(args):
    if args.runner is not None:
        if args.shard is not None or args.no_resume:
            raise UsageError("--shard and --no-resume apply to the single-machine command; with --runner the "
                             "pipeline spreads the videos over its workers and writes every video")
        return _cmd_beam(args, "features", args.inputs, layer=args.layer, window=args.window, stride=args.stride,
                         crop=args.crop)
    from nonlocal_zoo.features import expand_videos, extract_features, shard_videos

    model = _load(args)
    total = len(shard_videos(expand_videos(args.inputs), args.shard))
    records = extract_features(args.inputs, model, layer=args.layer, window=args.window, stride=args.stride,
                               crop=args.crop, batch_size=args.batch_size, output_dir=args.out, shard=args.shard,
                               resume=not args.no_resume, num_workers=args.workers)
    failed = [r for r in records if r["status"] != "ok"]
    if args.json:
        _print_json(records)
    else:
        done = len(records) - len(failed)
        print(f"{done} video(s) written to {args.out}, {total - len(records)} already done, {len(failed)} failed "
              f"(see {os.path.join(args.out, 'manifest.jsonl')})")
    for record in failed:
        print(f"error: {record['video']}: {record['error']}", file=sys.stderr)
    return EXIT_FAILURE if failed else EXIT_OK


def _cmd_timeline(args):
    from nonlocal_zoo.timeline import timeline

    model = _load(args)
    result = timeline(args.video, model, stride=args.stride, window=args.window,
                      top_k=min(args.top_k, model.num_classes), num_crops=args.num_crops, batch_size=args.batch_size,
                      out_dir=args.out, annotate=args.annotate)
    if args.json:
        _print_json({k: result[k] for k in ("video", "model", "window", "stride", "num_crops", "windows", "files")})
        return EXIT_OK
    for w in result["windows"]:
        best = w["top"][0]
        pad = " (padded)" if w["padded"] else ""
        print(f"{w['start']:9.2f}s-{w['end']:9.2f}s  frames {w['start_frame']}-{w['end_frame'] - 1}{pad}  "
              f"{best['label']} {best['score']:.3f}")
    for path in result["files"].values():
        print(f"wrote {path}")
    return EXIT_OK


def _cmd_benchmark(args):
    from nonlocal_zoo.benchmark import run_and_report

    output = run_and_report(quick=args.quick, sections=args.sections, threads=args.threads,
                            model_batches=args.model_batches, model_frames=args.model_frames, output=args.output,
                            json_path=args.json, command=_benchmark_command_line(args))
    print(f"Wrote {output}")
    return EXIT_OK


def _benchmark_command_line(args):
    """The `nonlocal-zoo benchmark ...` command that reproduces a run (recorded in the report)."""
    words = ["nonlocal-zoo benchmark"] + (["--quick"] if args.quick else [])
    for flag, value in (("--sections", args.sections), ("--threads", args.threads),
                        ("--model-batches", args.model_batches), ("--model-frames", args.model_frames),
                        ("--output", args.output), ("--json", args.json)):
        if value is not None:
            words += [flag, *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return " ".join(words)


def _cmd_prepare(args):
    from nonlocal_zoo.data import prepare_tfds

    result = prepare_tfds(args.folder, args.data_dir, name=args.name)
    print(f"prepared TFDS dataset {args.name!r} in {args.data_dir}" + (f": {result}" if result is not None else ""))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- parser
def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _shard(text):
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return f"{i}/{n}"




def _num_clips(text):
    value = _positive_int(text)
    if value > MAX_TEST_CLIPS:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_TEST_CLIPS}, got {text!r}")
    return value


def _add_model_args(p, *, required=True):
    p.add_argument("--model", "-m", required=required, default=None if required else "demo", help=MODEL_HELP)
    p.add_argument("--weights", default="auto", help=WEIGHTS_HELP)
    p.add_argument("--preset", default=None,
                   help="for a plain .keras model (not a VideoClassifier): the preset whose architecture and "
                        "preprocessing it has")
    p.add_argument("--labels", default=None, help="text file of class names, one per line (default: from the model)")


def _add_dtype_arg(p):
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute dtype: float32 (default) or bfloat16 (float32 weights, attention and scores; needs "
                        "a CPU with avx512_bf16/amx_bf16 or a recent GPU, refused otherwise)")


def _add_finetune(subparsers, formatter, full):
    p = subparsers.add_parser(
        "finetune", formatter_class=formatter, help="fine-tune a preset on a folder of clips (one folder per class)",
        description="Fine-tune a model on custom clips: DATA/<class>/*.mp4 (or DATA/train/<class>/...).")
    if not full:  # the training package is imported only when `finetune` is the command
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return
    add_finetune_arguments(p)
    p.set_defaults(handler=_cmd_finetune)


def add_finetune_arguments(parser):
    """Add the `finetune` arguments to an `argparse` parser (the `nonlocal-zoo finetune` sub-command).

    Every option defaults to "not given", so a `--config` recipe's values apply unless overridden here.

    Example:
        >>> args = add_finetune_arguments(argparse.ArgumentParser()).parse_args(["clips/", "--epochs", "2"])
    """
    from nonlocal_zoo.training import CLUSTERS, DEFAULTS, MIXED_POLICIES, SCHEDULES, STAGES, STRATEGIES

    p = parser
    p.add_argument("data", nargs="?", default=None,
                   help="training clips: folder root/<class>/<clip>, CSV/list file, or tfds:<name> (default when "
                        "resuming: the saved one)")
    p.add_argument("--model", metavar="PRESET", default=None,
                   help=f"preset to start from (default {DEFAULTS['model']})")
    p.add_argument("--config", metavar="YAML", default=None, help="recipe: YAML file or a name in configs/")
    p.add_argument("--weights", default=None,
                   help="'kinetics400' (default), a weights file, an hf:// handle, or 'none' (random init)")
    p.add_argument("--val", dest="val_data", metavar="DATA", default=None, help="validation clips")
    p.add_argument("--split", default=None, help="split folder of DATA (root/<split>/<class>/<clip>)")
    p.add_argument("--val-split", default=None, help="split folder of the validation data (e.g. val)")
    p.add_argument("--output", "--output-dir", dest="output_dir", metavar="DIR", default=None,
                   help="run folder (default runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last finished epoch")
    p.add_argument("--overwrite", action="store_true", help="delete the run in --output and start over")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="clips per replica (global = x replicas)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate for a global batch of --lr-base-batch-size, scaled linearly (default 0.01 @ 64)")
    p.add_argument("--lr-base-batch-size", type=int, default=None, help="global batch that --lr is given for")
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="step (official, default) or cosine")
    p.add_argument("--warmup-epochs", type=float, default=None, help="linear warmup length (epochs)")
    p.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay (default 1e-4)")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
    p.add_argument("--freeze-stages", choices=STAGES + ("none",), default=None,
                   help="freeze conv1 up to this stage (BN there in inference mode), e.g. res3")
    p.add_argument("--mixed-precision", nargs="?", const="auto", default=None,
                   choices=("auto", "off") + MIXED_POLICIES,
                   help="mixed precision (mixed_float16 on GPU, mixed_bfloat16 on CPU, or the given policy)")
    p.add_argument("--strategy", choices=STRATEGIES, default=None,
                   help="none, mirrored (GPUs of this machine) or multiworker (TF_CONFIG, or --cluster slurm)")
    p.add_argument("--cluster", choices=CLUSTERS, default=None,
                   help="where multiworker finds its workers: tf_config (the TF_CONFIG variable, default) or slurm "
                        "(one worker per task of the `srun` job step; implies --strategy multiworker)")
    p.add_argument("--port-base", type=int, default=None,
                   help="--cluster slurm: first port of the workers of a node (default 15000 + 16 x "
                        "(SLURM_JOB_ID %% 1000))")
    p.add_argument("--gpus-per-task", type=int, default=None,
                   help="--cluster slurm: GPUs per worker, 0 for CPUs only (default SLURM_GPUS_PER_TASK, else the "
                        "node's GPUs shared evenly by its tasks)")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="synchronized BatchNorm across replicas")
    p.add_argument("--num-frames", type=int, default=None, help="clip length override")
    p.add_argument("--crop", type=int, default=None, help="crop size override (short sides scaled accordingly)")
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--dropout", dest="dropout_rate", type=float, default=None)
    p.add_argument("--monitor", default=None, help="metric of the best checkpoint (default val_accuracy or loss)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", dest="set_options", action="append", metavar="KEY=VALUE", default=None,
                   help="any recipe setting as YAML, repeatable: --set arch.stage_depths=[1,1,1,1]")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None, help="0 silent, 1 progress bar, 2 per epoch")
    return parser


_FINETUNE_ARG_KEYS = ("model", "val_data", "split", "val_split", "epochs", "batch_size", "lr", "lr_base_batch_size",
                      "schedule", "warmup_epochs", "weight_decay", "momentum", "nesterov", "freeze_stages",
                      "strategy", "cluster", "port_base", "gpus_per_task", "sync_bn", "num_frames", "crop",
                      "steps_per_epoch", "dropout_rate", "monitor", "seed")


def finetune_options(args):
    """The `finetune` keyword arguments of parsed `add_finetune_arguments` arguments.

    Example:
        >>> finetune_options(parser.parse_args(["--mixed-precision", "off"]))["mixed_precision"]
        False
    """
    from nonlocal_zoo.training import load_config, parse_overrides

    options = {k: getattr(args, k, None) for k in _FINETUNE_ARG_KEYS}
    extra = parse_overrides(getattr(args, "set_options", None))
    recipe = load_config(args.config) if getattr(args, "config", None) else {}
    for key in ("arch", "preprocessing"):
        if key in extra and isinstance(extra[key], dict):
            extra[key] = {**recipe.get(key, {}), **extra[key]}  # --set arch.x=... adds to the recipe's overrides
    options.update(extra)
    options["weights"] = args.weights  # "none" -> random initialisation
    if args.mixed_precision is not None:
        options["mixed_precision"] = False if args.mixed_precision == "off" else args.mixed_precision
    return options


def finetune_main(argv=None, *, callbacks=None):
    """`nonlocal-zoo finetune DATA [options]` as a function, with extra Keras `callbacks` (for scripts and tests).

    Returns:
        The exit status: 0 ok, 2 bad input (one line on stderr), 130 interrupted.

    Example:
        >>> finetune_main(["clips/", "--config", "finetune_tiny_test", "--output", "runs/tiny"])
        0
    """
    parser = argparse.ArgumentParser(prog="nonlocal-zoo finetune",
                                     description="Fine-tune a model on custom clips: DATA/<class>/*.mp4.")
    args = add_finetune_arguments(parser).parse_args(argv)
    try:
        return _cmd_finetune(args, callbacks=callbacks)
    except ValueError as e:
        print(f"nonlocal-zoo finetune: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _add_benchmark(subparsers, formatter, full):
    p = subparsers.add_parser(
        "benchmark", formatter_class=formatter, help="speed and memory benchmarks",
        description="Benchmarks against the PyTorch reference on this machine (sections: machine, matmul, block, "
                    "chunking, models, precision, pipeline, backends); writes a Markdown report.",
        epilog="Example: nonlocal-zoo benchmark --quick --output /tmp/bench.md")
    if not full:  # the benchmark package is imported only when `benchmark` is the command
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return
    add_benchmark_arguments(p)
    p.set_defaults(handler=_cmd_benchmark)


def add_benchmark_arguments(parser):
    """Add the `benchmark` arguments to an `argparse` parser (the `nonlocal-zoo benchmark` sub-command).

    Example:
        >>> args = add_benchmark_arguments(argparse.ArgumentParser()).parse_args(["--quick"])
    """
    from nonlocal_zoo.benchmark import DEFAULT_OUTPUT, SECTIONS

    p = parser
    p.add_argument("--quick", action="store_true", help="tiny shapes, the same code paths (CI, < 60 s)")
    p.add_argument("--output", default=None,
                   help=f"Markdown report path (default: {DEFAULT_OUTPUT} for the full run, a temporary file in "
                        "--quick mode)")
    p.add_argument("--json", default=None, help="also write the raw results as JSON")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=None, metavar="SECTION",
                   help=f"sections to run, of {{{', '.join(SECTIONS)}}} (default: all)")
    p.add_argument("--threads", type=_positive_int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--model-batches", type=_positive_int, nargs="+", default=None, help="models section: batch sizes")
    p.add_argument("--model-frames", type=int, nargs="+", choices=(8, 32), default=None,
                   help="models section: clip lengths")
    return parser


def _command_of(argv):
    """The subcommand word of an argument list (the first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def _add_list_command(sub, formatter):
    """The `list` subcommand."""
    p = sub.add_parser("list", help="list the model presets", description="List the model presets.")
    p.add_argument("--pretrained", action="store_true", help="only presets with published weights")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(handler=_cmd_list)


def _add_info_command(sub, formatter):
    """The `info` subcommand."""
    p = sub.add_parser("info", help="architecture, parameters, MACs, weights and licence of a preset",
                       description="Show a preset's model card (or 'demo').")
    p.add_argument("name", help="preset name or 'demo'")
    p.set_defaults(handler=_cmd_info)


def _add_classify_command(sub, formatter):
    """The `classify` subcommand."""
    p = sub.add_parser("classify", help="top-k labels of video files", formatter_class=formatter, allow_abbrev=False,
                       description="Classify videos: top-k labels with scores, averaged over the views.",
                       epilog="Example: nonlocal-zoo classify clip.mp4 --model i3d_nl5_r50_8x8_kinetics400 "
                              "--num-clips 10 --num-crops 3")
    p.add_argument("videos", nargs="+", metavar="VIDEO",
                   help="video files (with --runner: also globs, folders and .txt/.csv lists, local or URIs)")
    _add_model_args(p)
    p.add_argument("--top-k", "-k", type=_positive_int, default=5, help="labels per video (default: 5)")
    p.add_argument("--num-clips", type=_num_clips, default=None,
                   help=f"temporal views per video, 1 to {MAX_TEST_CLIPS} (default: 1; with --runner the preset's)")
    p.add_argument("--num-crops", type=int, choices=(1, 3), default=None,
                   help="spatial crops per view (default: 1; with --runner the preset's)")
    _add_dtype_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_beam_args(p, job="classify")
    p.set_defaults(handler=_cmd_classify)


def _add_beam_args(p, *, job):
    """`--runner` and the options of the Beam pipeline (`classify`, `features`)."""
    from nonlocal_zoo.beam import RUNNERS

    g = p.add_argument_group("Apache Beam (pip install 'nonlocal_zoo[beam]'); other --flags go to Beam's pipeline "
                             "options, e.g. --direct_num_workers 2 --direct_running_mode multi_processing, "
                             "--project/--region/--temp_location (Dataflow), --flink_master, --spark_master_url; "
                             "everything after a bare `--` goes to Beam verbatim (Beam's options named like ours: "
                             f"{' '.join(BEAM_NAMESAKES)}, e.g. `-- --labels team=video` for Dataflow's job labels)")
    g.add_argument("--runner", choices=RUNNERS, default=None,
                   help="run as an Apache Beam pipeline on this runner (default: this machine, no Beam)")
    if job == "classify":
        g.add_argument("--out", "-o", default=None,
                       help="with --runner: output folder or URI (predictions-*.jsonl, dead_letter.jsonl)")
        g.add_argument("--batch-size", type=_positive_int, default=8,
                       help="with --runner: views per forward pass (default: 8)")
    g.add_argument("--min-batch-size", type=_positive_int, default=1,
                   help="with --runner: smallest batch RunInference forms (default: 1)")
    g.add_argument("--max-batch-size", type=_positive_int, default=None,
                   help="with --runner: largest batch RunInference forms, across videos (default: --batch-size)")
    g.add_argument("--large-model", action="store_true",
                   help="with --runner: one model copy per machine, shared by its worker processes (RunInference's "
                        "large_model), instead of one copy per process")
    g.add_argument("--model-copies", type=_positive_int, default=None, metavar="N",
                   help="with --runner: N model copies per machine, shared by its worker processes (RunInference's "
                        "model_copies; implies --large-model)")


def _add_evaluate_command(sub, formatter):
    """The `evaluate` subcommand."""
    p = sub.add_parser("evaluate", help="multi-view accuracy on labelled clips", formatter_class=formatter,
                       description="Clip- and video-level top-1/top-5 accuracy with multi-view testing.")
    p.add_argument("source", help="clip folder (<class>/*.mp4), CSV/list file or tfds:NAME")
    _add_model_args(p)
    p.add_argument("--num-clips", type=_num_clips, default=10,
                   help=f"temporal views per video, 1 to {MAX_TEST_CLIPS} (default: 10)")
    p.add_argument("--num-crops", type=int, choices=(1, 3), default=3, help="spatial crops per view (default: 3)")
    p.add_argument("--split", default=None, help="split sub-folder or TFDS split")
    p.add_argument("--data-dir", default=None, help="TFDS data directory")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="views per forward pass")
    _add_dtype_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_evaluate)


def _add_convert_command(sub, formatter):
    """The `convert` subcommand."""
    p = sub.add_parser("convert", help="convert an upstream checkpoint file to Keras weights",
                       description="Convert a downloaded checkpoint (.pkl/.pth/.pyth) of a preset to Keras weights.")
    p.add_argument("source", help="the upstream checkpoint file, or 'kinetics400' for the preset's own (downloaded)")
    p.add_argument("--model", "-m", required=True, help="the preset the checkpoint belongs to")
    p.add_argument("--out", "-o", required=True, help="output file: .weights.h5 (weights) or .keras (whole model)")
    p.add_argument("--format", default=None, help="checkpoint format (default: detected from the file)")
    p.set_defaults(handler=_cmd_convert)


def _add_download_command(sub, formatter):
    """The `download` subcommand."""
    p = sub.add_parser("download", help="download a preset's upstream checkpoint into the cache",
                       description="Download a preset's upstream checkpoint (hash-checked, cached); prints its path. "
                                   "Models convert it on first use with weights='kinetics400'.")
    p.add_argument("name", help="preset name with published weights (`nonlocal-zoo list --pretrained`)")
    p.add_argument("--offline", action="store_true", help="only check the cache; never use the network")
    p.set_defaults(handler=_cmd_download)


def _add_export_command(sub, formatter):
    """The `export` subcommand."""
    p = sub.add_parser("export", help="export a model (SavedModel, TFLite, ONNX)",
                       description="Export a model for serving: uint8 clips in, probabilities out.")
    _add_model_args(p)
    p.add_argument("--format", "-f", required=True, choices=("saved_model", "tflite", "onnx"), help="export format")
    p.add_argument("--out", "-o", default=None, help="output path (default: <model name>/ .tflite or .onnx)")
    p.add_argument("--quantization", choices=("float16", "dynamic_int8", "int8"), default=None,
                   help="TFLite quantization (default: float32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(handler=_cmd_export)


def _add_attention_command(sub, formatter):
    """The `attention` subcommand."""
    p = sub.add_parser("attention", help="non-local attention map of a query position", formatter_class=formatter,
                       description="Draw where a non-local block attends from one query position of a clip: a PNG "
                                   "contact sheet and an animated GIF of the strongest weights over the frames.",
                       epilog="Example: nonlocal-zoo attention clip.mp4 --model demo --query 4,32,32 --out att/")
    p.add_argument("video", help="video file")
    _add_model_args(p)
    p.add_argument("--query", "-q", default=None,
                   help="t,y,x in the model-input clip (frame, row, column); default: the most salient moving "
                        "point of the middle frame")
    p.add_argument("--block", "-b", default=None, help="non-local block name (default: the last one)")
    p.add_argument("--out", "-o", default="attention", help="output folder (default: ./attention)")
    p.add_argument("--top-k", "-k", type=_positive_int, default=8, help="strongest keys to mark (default: 8)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_attention)


def _add_demo_command(sub, formatter):
    """The `demo` subcommand."""
    p = sub.add_parser("demo", help="offline demo on the embedded motion model (start here)",
                       description="Render synthetic motion clips, classify them with the embedded non-local model, "
                                   "and draw an attention map. Offline; about a minute on a laptop.")
    p.add_argument("--out", "-o", default="demo_output", help="output folder (default: ./demo_output)")
    p.add_argument("--num-clips", type=_positive_int, default=5, help="clips to render and classify (default: 5)")
    p.add_argument("--seed", type=int, default=2018, help="seed of the rendered clips (default: 2018)")
    p.set_defaults(handler=_cmd_demo)


def _add_features_command(sub, formatter):
    """The `features` subcommand."""
    p = sub.add_parser("features", help="windowed features of long videos (frame-exact, resumable, shardable)",
                       formatter_class=formatter, allow_abbrev=False,
                       description="Cut videos into windows (one clip of the model's protocol each) and write one "
                                   "feature row per window, with the exact frames and timestamps it covers: "
                                   "OUT/<stem>.npz per video and OUT/manifest.jsonl (see docs/long_videos.md).",
                       epilog="Example: nonlocal-zoo features videos/ --model demo --layer pool5 --stride 4 "
                              "--out feats/ --shard 0/2")
    p.add_argument("inputs", nargs="+", metavar="VIDEO|DIR|LIST.txt",
                   help="video files, folders (searched recursively) or .txt lists (one path a line)")
    _add_model_args(p)
    p.add_argument("--layer", default="pool5", help="layer whose output is the feature: pool5 (default), res2..res5, "
                                                    "or any layer name (5-D outputs are averaged over time and space)")
    p.add_argument("--window", type=_positive_int, default=None,
                   help="frames per window, a multiple of the clip's frames (default: num_frames x sampling_rate)")
    p.add_argument("--stride", type=_positive_int, default=None, help="frames between window starts "
                                                                       "(default: the window)")
    p.add_argument("--crop", choices=("center", "full"), default="center",
                   help="center: the preset's test short side and one centre crop (default); full: whole frames")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="process every N-th video of the sorted list from position I (0-based); N processes with "
                        "I = 0..N-1 together write the files of one run")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="windows per forward pass (default: 8)")
    _add_dtype_arg(p)
    p.add_argument("--workers", type=_positive_int, default=2, help="videos decoded in parallel (default: 2)")
    p.add_argument("--no-resume", action="store_true", help="extract again videos whose output file exists")
    p.add_argument("--json", action="store_true", help="print the manifest records of this run as JSON")
    _add_beam_args(p, job="features")
    p.set_defaults(handler=_cmd_features)


def _add_timeline_command(sub, formatter):
    """The `timeline` subcommand."""
    p = sub.add_parser("timeline", help="per-window top-k classes of a long video (JSON, CSV, PNG, MP4)",
                       formatter_class=formatter,
                       description="Score every window of a video with the classifier (the same views and "
                                   "aggregation as evaluate, one temporal clip per window) and write "
                                   "timeline.json, timeline.csv and timeline.png (and annotated.mp4).",
                       epilog="Example: nonlocal-zoo timeline match.mp4 --model demo --stride 4 --top-k 3 "
                              "--out timeline/ --annotate")
    p.add_argument("video", help="video file")
    _add_model_args(p)
    p.add_argument("--stride", type=_positive_int, default=None, help="frames between window starts "
                                                                       "(default: the window)")
    p.add_argument("--window", type=_positive_int, default=None,
                   help="frames per window, a multiple of the clip's frames (default: num_frames x sampling_rate)")
    p.add_argument("--top-k", "-k", type=_positive_int, default=5, help="classes per window (default: 5)")
    p.add_argument("--num-crops", type=int, choices=(1, 3), default=None,
                   help="spatial crops per window (default: the preset's, as evaluate)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="views per forward pass (default: 8)")
    _add_dtype_arg(p)
    p.add_argument("--out", "-o", default="timeline", help="output folder (default: ./timeline)")
    p.add_argument("--annotate", action="store_true", help="also write annotated.mp4 (label and score drawn)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_timeline)


def _add_prepare_command(sub, formatter):
    """The `prepare` subcommand."""
    p = sub.add_parser("prepare", help="build a TFDS dataset from a folder of clips",
                       description="Decode a clip folder (<class>/*.mp4, optionally under train/ val/) into TFDS.")
    p.add_argument("folder", help="the clip folder")
    p.add_argument("--data-dir", required=True, help="TFDS data directory to write to")
    p.add_argument("--name", default="video_folder", help="dataset name (default: video_folder)")
    p.set_defaults(handler=_cmd_prepare)


def build_parser(command=None):
    """The `nonlocal-zoo` argument parser (subcommands listed in the module docstring).

    Args:
        command: the subcommand about to run; `"finetune"` and `"benchmark"` add their options (importing the
            training or benchmark package), otherwise only their names are registered so that `--help` stays fast.
    """
    def formatter(prog):
        return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)

    parser = argparse.ArgumentParser(
        prog="nonlocal-zoo", formatter_class=formatter,
        description="Non-local Neural Networks (Wang et al., CVPR 2018) for video classification in Keras 3.",
        epilog="Start with `nonlocal-zoo demo` (offline). Each command has --help.")
    from nonlocal_zoo.version import __version__

    parser.add_argument("--version", action="version", version=f"nonlocal-zoo {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and TensorFlow's start-up logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_list_command(sub, formatter)
    _add_info_command(sub, formatter)
    _add_classify_command(sub, formatter)
    _add_evaluate_command(sub, formatter)
    _add_finetune(sub, formatter, full=command == "finetune")
    _add_convert_command(sub, formatter)
    _add_download_command(sub, formatter)
    _add_export_command(sub, formatter)
    _add_attention_command(sub, formatter)
    _add_demo_command(sub, formatter)
    _add_features_command(sub, formatter)
    _add_timeline_command(sub, formatter)
    _add_benchmark(sub, formatter, full=command == "benchmark")
    _add_prepare_command(sub, formatter)
    return parser


def _names_runner(argv):
    return any(a == "--runner" or a.startswith("--runner=") for a in argv)


def main(argv=None):
    """Runs the command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_of(argv)
    parser = build_parser(command)
    if command in ("classify", "features") and _names_runner(argv):
        # the words we do not know are Beam's pipeline options, and so is everything after a bare `--` (for Beam's
        # options named like ours, BEAM_NAMESAKES: `... --runner DataflowRunner -- --labels team=video`)
        ours, beam_tail = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
        if not _names_runner(ours):
            parser.error("--runner goes before the bare `--` (the words after `--` are Beam's pipeline options)")
        args, beam_options = parser.parse_known_args(ours)
        args.beam_options = [*beam_options, *beam_tail]
    else:
        args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    global _DEBUG
    _DEBUG = args.debug
    if not args.debug:  # FFmpeg's and OpenCV's own log lines would come before our one `error:` line
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        _precheck(args)  # cheap mistakes are reported before TensorFlow is imported (seconds)
        if args.command not in ("list", "info", "download", "benchmark"):
            _quiet_tensorflow()
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        code = _exit_code(error)
        if code is None or args.debug:  # a bug, not a mistake: keep the traceback
            raise
        print(f"error: {' '.join(str(error).split()) or type(error).__name__}", file=sys.stderr)
        return code


# Commands after which the program ends without the interpreter's teardown (see `console_main`): they write nothing
# but stdout/stderr, and the teardown of TensorFlow's modules takes about a second of a one-clip `classify`.
FAST_EXIT_COMMANDS = ("classify",)


def console_main(argv=None):
    """The `nonlocal-zoo` program (console script and `python -m nonlocal_zoo.cli`): `main`, then the exit.

    After a command of `FAST_EXIT_COMMANDS` the process ends with `os._exit` once stdout and stderr are flushed and
    the exit handlers (`atexit`: logging, TensorFlow, temporary files) have run, skipping only the interpreter's
    module teardown (about 1 s of a 6.5 s cold start of `classify` on the demo model). Other commands, `--debug`
    and errors that are bugs (tracebacks) exit normally. Call `main` from Python: it returns the exit code.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    code = main(argv)
    if _command_of(argv) in FAST_EXIT_COMMANDS and not _DEBUG:
        import atexit

        _flush_standard_streams()
        atexit._run_exitfuncs()
        _flush_standard_streams()
        os._exit(code)
    return code


def _flush_standard_streams():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or a closed stream: nothing more can be written
            pass


def _precheck(args):
    """Argument checks that need no TensorFlow: files named as videos, models, weights and labels."""
    if getattr(args, "runner", None) is not None:
        return _precheck_beam(args)
    for path in getattr(args, "videos", None) or ([args.video] if getattr(args, "video", None) else []):
        _check_video_path(path)
    if args.command == "features":
        for path in args.inputs:
            if not os.path.exists(path):
                raise UsageError(f"No such video, folder or list file: {path!r}")
    if getattr(args, "model", None) is not None and args.command in ("classify", "evaluate", "attention", "export",
                                                                     "features", "timeline"):
        _check_model_arg(args)


def _precheck_beam(args):
    """`classify`/`features --runner`: Beam is installed, an output is named, local sources and the model exist."""
    from nonlocal_zoo.beam import require_beam

    require_beam()  # ImportError naming the extra: one `error:` line, exit 2
    if args.out is None:
        raise UsageError(f"`{args.command} --runner` writes files: pass --out DIR (a folder or a URI)")
    if args.labels is not None and not os.path.isfile(args.labels):
        hint = (" Beam's --labels KEY=VALUE (Dataflow's job labels) goes after a bare `--`: `nonlocal-zoo "
                f"{args.command} ... --runner DataflowRunner ... -- --labels KEY=VALUE`") if "=" in args.labels else ""
        raise UsageError(f"No such labels file (--labels names a text file of class names): {args.labels!r}.{hint}")
    for path in getattr(args, "videos", None) or args.inputs:
        if "://" not in path and not any(c in path for c in "*?[") and not os.path.exists(path):
            raise UsageError(f"No such video, folder or list file: {path!r}")
    if "://" not in args.model:
        _check_model_arg(args)


def _exit_code(error):
    """Exit code of an expected error, or None for an unexpected one."""
    if type(error).__module__ == "nonlocal_zoo.pretrained.download":  # DownloadError, OfflineError, ChecksumError
        return EXIT_FAILURE
    if isinstance(error, (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, ImportError)):
        return EXIT_USAGE  # bad values, unknown names, missing or unreadable files, missing optional packages
    if isinstance(error, OSError):  # network, disk
        return EXIT_FAILURE
    return None


if __name__ == "__main__":
    sys.exit(console_main())
