"""The mmaction2 side of the `e2e` benchmark section: a script run by the Python of a separate mmaction2 venv
(`scripts/setup_mmaction2_venv.sh`), never imported by nonlocal_zoo itself (it needs torch, mmengine, mmaction2 and
nothing of ours). It prints one JSON line `E2E_MMACTION2 {...}`.

Two commands:

- `checkpoint`: builds mmaction2's own I3D-NL5 R50 32x2x1 embedded-Gaussian recognizer from the config shipped with
  mmaction2 (`CONFIG`), seeds it, draws its BatchNorm affine parameters and head at random (so that every residual and
  non-local branch contributes and the scores are far from uniform), calibrates the BatchNorm statistics on the
  video's own test views (train-mode forward passes, cumulative averages), and saves the state dict in mmaction2's
  checkpoint format (`{"meta", "state_dict"}`, as mmengine's `save_checkpoint`). No internet: this stands in for the
  published checkpoint, and is what both sides load.
- `time`: `init_recognizer(config, checkpoint)` then `inference_recognizer(model, video)` with the config's test
  pipeline set to `num_clips` clips x 3 crops of 256 (the shipped pipeline: decord, `Resize(-1, 256)`,
  `ThreeCrop(256)`), one warm-up call and `repeats` timed ones (wall and CPU seconds), and the aggregated
  probabilities (`pred_score`) of the video.
- `serve`: the same recognizer, one timed call per `run` line on stdin: the benchmark interleaves these calls with
  its own.

Example:
    $ /work/venvs/mmaction2/bin/python nonlocal_zoo/benchmark/e2e_mmaction2.py checkpoint --video demo.mp4 \
        --out /tmp/i3d_nl.pth
    $ /work/venvs/mmaction2/bin/python nonlocal_zoo/benchmark/e2e_mmaction2.py time --video demo.mp4 \
        --checkpoint /tmp/i3d_nl.pth --num-clips 2 --repeats 3
"""
import argparse
import json
import os
import sys
import time

CONFIG = ("recognition", "i3d",
          "i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py")


def config_path():
    """The I3D-NL5 embedded-Gaussian config inside the installed mmaction2 package (`mmaction/.mim/configs`)."""
    import mmaction

    return os.path.join(os.path.dirname(mmaction.__file__), ".mim", "configs", *CONFIG)


def load_config(num_clips, num_crops):
    """The shipped config, ImageNet pretraining off, test pipeline with `num_clips` clips x `num_crops` crops."""
    from mmengine.config import Config

    cfg = Config.fromfile(config_path())
    cfg.model.backbone.pretrained = None
    cfg.model.backbone.pretrained2d = False
    for step in cfg.test_pipeline:
        if step["type"] == "SampleFrames":
            step["num_clips"] = num_clips
        if step["type"] == "ThreeCrop" and num_crops == 1:
            step["type"], step["crop_size"] = "CenterCrop", step["crop_size"]
    return cfg


def _views(model, cfg, video):
    """The normalised test views of `video` as the recognizer sees them: float (V, 3, T, S, S)."""
    from mmengine.dataset import Compose, pseudo_collate

    data = Compose(cfg.test_pipeline)(dict(filename=video, label=-1, start_index=0, modality="RGB"))
    inputs = model.data_preprocessor(pseudo_collate([data]), False)["inputs"]  # (1, V, 3, T, S, S)
    return inputs.reshape((-1,) + tuple(inputs.shape[2:]))


def make_checkpoint(args):
    import torch
    from mmaction.apis import init_recognizer

    torch.manual_seed(args.seed)
    cfg = load_config(args.num_clips, args.num_crops)
    model = init_recognizer(cfg, None, device="cpu")
    generator = torch.Generator().manual_seed(args.seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(torch.empty(m.weight.shape).uniform_(0.6, 1.4, generator=generator))
            m.bias.copy_(torch.empty(m.bias.shape).normal_(0.0, 0.1, generator=generator))
            m.reset_running_stats()
            m.momentum = None  # cumulative averages over the calibration passes
        fc = model.cls_head.fc_cls
        fc.weight.copy_(torch.empty(fc.weight.shape).normal_(0.0, args.head_std, generator=generator))
        fc.bias.zero_()
        x = _views(model, cfg, args.video)  # (V, 3, T, S, S)
        model.train()
        for start in range(0, len(x), 2):
            model.backbone(x[start:start + 2])
        model.eval()
    for m in norms:
        m.momentum = 0.1
    state = {"meta": {"seed": args.seed, "config": os.path.basename(config_path()), "calibrated_on":
                      os.path.basename(args.video), "mmaction2": __import__("mmaction").__version__},
             "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    tmp = args.out + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, args.out)
    return {"checkpoint": args.out, "tensors": len(state["state_dict"]),
            "parameters": int(sum(p.numel() for p in model.parameters()))}


def _recognizer(args):
    """`(model, init seconds)`: the recognizer of the config with the checkpoint, `args.threads` torch threads."""
    import torch
    from mmaction.apis import init_recognizer

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    model = init_recognizer(load_config(args.num_clips, args.num_crops), args.checkpoint, device="cpu")
    return model, time.perf_counter() - t


def _timed_call(model, video):
    """One timed `inference_recognizer` call: `{"wall_s", "cpu_s", "scores"}`."""
    from mmaction.apis import inference_recognizer

    t, c = time.perf_counter(), time.process_time()
    result = inference_recognizer(model, video)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"wall_s": wall, "cpu_s": cpu, "scores": result.pred_score.detach().cpu().double().numpy().tolist()}


def _versions():
    import torch

    return {"torch": torch.__version__, "mmaction2": __import__("mmaction").__version__,
            "mmengine": __import__("mmengine").__version__, "mmcv": __import__("mmcv").__version__,
            "threads": torch.get_num_threads()}


def time_inference(args):
    model, init_s = _recognizer(args)
    for _ in range(args.warmup):
        _timed_call(model, args.video)
    calls = [_timed_call(model, args.video) for _ in range(args.repeats)]
    return {"init_s": init_s, "wall_s": [c["wall_s"] for c in calls], "cpu_s": [c["cpu_s"] for c in calls],
            "scores": calls[-1]["scores"], "views": args.num_clips * args.num_crops, "versions": _versions()}


def serve(args):
    """Loads the recognizer, prints `{"ready", "init_s", "versions"}`, then one timed call per `run` line read from
    stdin (so that the caller can interleave these calls with its own); ends at `quit` or end of input."""
    model, init_s = _recognizer(args)
    print("E2E_MMACTION2 " + json.dumps({"ready": True, "init_s": init_s, "versions": _versions()}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        if line.strip() == "run":
            print("E2E_MMACTION2 " + json.dumps(_timed_call(model, args.video)), flush=True)
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("checkpoint", "time", "serve"):
        p = sub.add_parser(name)
        p.add_argument("--video", required=True)
        p.add_argument("--num-clips", type=int, default=2)
        p.add_argument("--num-crops", type=int, default=3, choices=(1, 3))
        if name == "checkpoint":
            p.add_argument("--out", required=True)
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--head-std", type=float, default=0.05)
        else:
            p.add_argument("--checkpoint", required=True)
            p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
        if name == "time":
            p.add_argument("--warmup", type=int, default=1)
            p.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.video):
        parser.error(f"--video: no such file: {args.video!r}")
    if args.command != "checkpoint" and not os.path.isfile(args.checkpoint):
        parser.error(f"--checkpoint: no such file: {args.checkpoint!r}")
    if args.command == "serve":
        return serve(args)
    result = make_checkpoint(args) if args.command == "checkpoint" else time_inference(args)
    print("E2E_MMACTION2 " + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
