"""Fine-tuning: recipes, schedule and optimizer numerics, frozen stages, sync BN, learning, kill-and-resume.

Tiny models (configs/finetune_tiny_test.yaml: one block per stage, widths 4-8, 4 frames of 32x32) on tiny generated
datasets whose classes differ in colour.
"""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from nonlocal_zoo import cli, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "finetune_tiny_test.yaml")
COLOURS = {"blue": (40, 60, 200), "green": (50, 190, 60), "red": (210, 50, 40)}  # class folders, sorted
TINY_ARCH = training.load_config(TINY)["arch"]


def write_colour_clips(root, per_class, *, seed, frames=8, size=40):
    """Writes `root/<colour>/<i>.mp4`: noisy frames of one colour per class (a trivially learnable signal)."""
    import cv2

    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            base = np.array(rgb, np.float32) * rng.uniform(0.7, 1.0)
            clip = np.clip(base + rng.normal(0, 25, (frames, size, size, 3)), 0, 255).astype(np.uint8)
            path = os.path.join(root, name, f"{i}.mp4")
            writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 8, (size, size))
            assert writer.isOpened(), path
            for frame in clip:
                writer.write(np.ascontiguousarray(frame[..., ::-1]))  # VideoWriter takes BGR
            writer.release()
    return str(root)


def subprocess_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    return write_colour_clips(root / "train", 4, seed=0), write_colour_clips(root / "val", 2, seed=1)


def tiny_model(**arch):
    from nonlocal_zoo.models import add_classifier_head, create_model

    base = create_model("i3d_nl5_r50_8x8_kinetics400", weights=None, include_top=False,
                        input_shape=(4, 32, 32, 3), **{**TINY_ARCH, **arch})
    return add_classifier_head(base, classes=3, dropout_rate=0.0)


# ----------------------------------------------------------------------------------------------------------------------
# Recipes and settings
# ----------------------------------------------------------------------------------------------------------------------
def test_recipes_load_and_resolve():
    recipe = training.load_config("finetune_i3d_nl5_r50_8x8")  # by name, from configs/
    assert recipe["model"] == "i3d_nl5_r50_8x8_kinetics400"
    cfg = training.resolve_config(recipe, epochs=3)
    # official Caffe2 solver settings
    assert (cfg["weight_decay"], cfg["momentum"], cfg["weight_decay_bn"]) == (1e-4, 0.9, 0.0)
    assert cfg["lr_steps"] == [0.375, 0.75, 0.875] and cfg["lr_factors"] == [1.0, 0.1, 0.01, 0.001]
    assert cfg["epochs"] == 3 and cfg["lr"] == recipe["lr"]
    tiny = training.resolve_config(TINY)
    over = training.preprocessing_overrides(tiny)
    assert over["train_crop"] == over["test_crop"] == 32 and over["num_frames"] == 4
    assert over["train_short_side_range"] == [37, 46] and over["test_short_side"] == 37  # 32 * 256/224, 32 * 320/224


@pytest.mark.parametrize("options, message", [
    ({"epoch": 3}, "Unknown fine-tuning settings ['epoch']"),
    ({"schedule": "linear"}, "schedule='linear'"),
    ({"freeze_stages": "res6"}, "freeze_stages='res6'"),
    ({"strategy": "tpu"}, "strategy='tpu'"),
    ({"lr_steps": [0.5, 0.2]}, "lr_steps=[0.5, 0.2]"),
    ({"lr_factors": [1.0]}, "lr_factors=[1.0]"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"mixed_precision": "fp8"}, "mixed_precision='fp8'"),
])
def test_bad_settings_name_the_value(options, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        training.resolve_config(**options)


def test_bad_recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: i3d_r50\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"Unknown fine-tuning settings \['learning_rate'\]"):
        training.load_config(str(path))
    with pytest.raises(ValueError, match="config not found"):
        training.load_config(str(tmp_path / "missing.yaml"))


def test_cli_arguments_map_to_settings():
    import argparse

    parser = cli.add_finetune_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["clips", "--config", TINY, "--epochs", "2", "--lr", "0.5", "--schedule", "step",
                              "--freeze-stages", "res3", "--mixed-precision", "--strategy", "mirrored", "--sync-bn",
                              "--weights", "none", "--set", "arch.stem_width=16", "--set", "warmup_epochs=0.5",
                              "--output", "out", "--val", "val_clips"])
    options = cli.finetune_options(args)
    cfg = training.resolve_config(TINY, **options, data=args.data, output_dir=args.output_dir)
    assert (cfg["epochs"], cfg["lr"], cfg["schedule"], cfg["freeze_stages"]) == (2, 0.5, "step", "res3")
    assert (cfg["mixed_precision"], cfg["strategy"], cfg["sync_bn"], cfg["weights"]) == ("auto", "mirrored", True, None)
    assert cfg["arch"] == {**TINY_ARCH, "stem_width": 16}  # --set adds to the recipe's overrides
    assert (cfg["warmup_epochs"], cfg["val_data"], cfg["data"], cfg["output_dir"]) == (0.5, "val_clips", "clips", "out")
    assert cli.finetune_options(parser.parse_args(["--mixed-precision", "off"]))["mixed_precision"] is False


def test_refuses_to_overwrite_a_run(tmp_path, colour_data):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "training_log.csv").write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(ValueError, match="already holds a run"):
        training.finetune(colour_data[0], config=TINY, output_dir=str(tmp_path / "run"), verbose=0)


# ----------------------------------------------------------------------------------------------------------------------
# Schedule, linear scaling and optimizer: against numpy transcriptions of the formulas
# ----------------------------------------------------------------------------------------------------------------------
def test_linear_lr_scaling():
    assert training.scaled_learning_rate(0.01, global_batch_size=16, lr_base_batch_size=64) == pytest.approx(0.0025)
    # base defaults to one replica's batch: lr x replicas
    assert training.scaled_learning_rate(0.1, global_batch_size=8, per_replica_batch_size=4) == pytest.approx(0.2)


def test_step_schedule_with_warmup_matches_official_rule():
    total, lr, warm = 400, 0.02, 20
    schedule = training.make_lr_schedule(lr=lr, schedule="step", total_steps=total, warmup_steps=warm,
                                         warmup_start_factor=0.1)
    steps = np.array([0, 1, 10, 19, 20, 149, 150, 299, 300, 349, 350, 399])
    got = np.array([float(schedule(int(s))) for s in steps])
    # official steps_with_relative_lrs at 150k/300k/350k of 400k, then linear warmup from 0.1x to lr(warm)
    piece = lr * np.array([1, 0.1, 0.01, 0.001])[np.searchsorted([150, 300, 350], steps, side="right")]
    expected = np.where(steps < warm, 0.1 * lr + (lr - 0.1 * lr) * steps / warm, piece)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_cosine_schedule_with_warmup_matches_formula():
    total, lr, warm = 100, 0.1, 10
    schedule = training.make_lr_schedule(lr=lr, schedule="cosine", total_steps=total, warmup_steps=warm,
                                         warmup_start_factor=0.1)
    steps = np.array([0, 5, 10, 30, 55, 99, 100])
    got = np.array([float(schedule(int(s))) for s in steps])
    warmup = 0.1 * lr + (lr - 0.1 * lr) * steps / warm
    cosine = 0.5 * lr * (1 + np.cos(np.pi * np.minimum(steps - warm, total - warm) / (total - warm)))
    np.testing.assert_allclose(got, np.where(steps < warm, warmup, cosine), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_sgd_adds_l2_to_the_gradient(nesterov):
    import keras

    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(2,)).astype(np.float32)
    w, b = keras.Variable(w0, name="kernel"), keras.Variable(b0, name="gamma")
    lr, mu, wd = 0.1, 0.9, 0.05
    opt = training.MomentumSGD(learning_rate=lr, momentum=mu, nesterov=nesterov, weight_decay=wd,
                               no_decay_paths=[b.path])
    grads = [(rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(2,)).astype(np.float32)) for _ in range(3)]
    ref = {"w": w0.astype(np.float64), "b": b0.astype(np.float64)}
    mom = {"w": 0.0, "b": 0.0}
    for gw, gb in grads:
        opt.apply_gradients([(gw, w), (gb, b)])
        # Caffe2 MomentumSGDUpdate with weight decay in the gradient: m = mu m + lr (g + wd w); w -= m (or Nesterov)
        for key, g, decay in (("w", gw, wd), ("b", gb, 0.0)):
            g = g + decay * ref[key]
            m_new = mu * mom[key] + lr * g
            ref[key] = ref[key] - ((1 + mu) * m_new - mu * mom[key] if nesterov else m_new)
            mom[key] = m_new
    np.testing.assert_allclose(keras.ops.convert_to_numpy(w), ref["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(b), ref["b"], rtol=1e-5, atol=1e-6)
    restored = training.MomentumSGD.from_config(opt.get_config())
    assert restored.no_decay_paths == [b.path] and restored.weight_decay == pytest.approx(wd)


# ----------------------------------------------------------------------------------------------------------------------
# Frozen stages and synchronized BatchNorm
# ----------------------------------------------------------------------------------------------------------------------
def test_stage_names():
    assert [training.stage_of_layer(n) for n in ("pool1", "res2_0_branch2a_bn", "pool2", "nonlocal_conv3_0",
                                                 "res4", "res5_0_sum", "pred", "clip", "pool5")] == \
        ["conv1", "res2", "res2", "res3", "res4", "res5", None, None, None]


def test_frozen_stages_keep_weights_and_bn_statistics():
    import keras

    model = tiny_model()
    frozen = training.freeze_stages(model, "res3")
    assert "nonlocal_conv3_0" in frozen and "res3_0_branch2a_bn" in frozen and "res_conv1_bn" in frozen
    assert not any(n.startswith(("res4", "res5", "pred")) for n in frozen)
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}
    model.compile(keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 4, 32, 32, 3)).astype("float32")
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, batch_size=4, verbose=0)
    changed = {v.path for v in model.weights if not np.array_equal(keras.ops.convert_to_numpy(v), before[v.path])}
    frozen_paths = {v.path for v in model.weights if training.stage_of_layer(v.path.split("/")[0]) in
                    ("conv1", "res2", "res3")}
    # nothing of conv1..res3 moved: kernels, BN scales and the BN moving statistics (inference mode), NL block BN too
    assert frozen_paths and not (changed & frozen_paths)
    assert "nonlocal_conv3_0/bn/moving_mean" in frozen_paths
    # (res4 branch2a gets no gradient yet: the branch2c BN gammas start at zero, as in the official init)
    assert {"res4_0_branch2a_bn/moving_mean", "res4_0_branch1/kernel", "res4_0_branch2c_bn/gamma",
            "pred/kernel"} <= changed


def test_sync_batchnorm_conversion_keeps_weights():
    import keras

    model = tiny_model()
    x = np.random.default_rng(1).normal(size=(2, 4, 32, 32, 3)).astype("float32")
    synced = training.convert_to_sync_batchnorm(model)
    bns = [layer for layer in synced._flatten_layers(include_self=False)
           if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) > 10 and all(layer.synchronized for layer in bns)
    assert synced.get_layer("res_conv1_bn").get_config()["synchronized"] is True
    assert synced.get_layer("nonlocal_conv3_0").bn.synchronized  # nested in the non-local block
    np.testing.assert_allclose(synced.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------------------
def test_finetune_learns_and_writes_everything(tmp_path, colour_data, capsys):
    import keras

    from nonlocal_zoo.data import make_dataset

    train_dir, val_dir = colour_data
    out = str(tmp_path / "run")
    result = training.finetune(train_dir, config=TINY, val_data=val_dir, output_dir=out, epochs=5, verbose=0)
    history = result.history
    # loss goes down and the held-out clips are classified far above chance (1/3)
    assert history["loss"][-1] < history["loss"][0] and history["loss"][-1] < 0.7 * math.log(3)
    assert max(history["val_accuracy"]) >= 5 / 6
    assert history["learning_rate"][-1] < history["learning_rate"][0]
    # class map from the folder names; checkpoints, TensorBoard, CSV, settings
    with open(os.path.join(out, "class_names.txt")) as f:
        assert f.read().split() == ["blue", "green", "red"]
    for path in (result.best_checkpoint, result.last_checkpoint, result.csv_log, result.config_file):
        assert os.path.isfile(path), path
    assert os.listdir(os.path.join(out, "logs", "train")) and os.listdir(os.path.join(out, "logs", "validation"))
    assert not os.path.exists(os.path.join(out, "backup"))  # removed once the run finished
    assert result.config["derived"]["steps_per_epoch"] == 12 // 4
    assert result.config["derived"]["learning_rate"] == pytest.approx(0.1)
    # the best checkpoint is the epoch with the best val_accuracy: re-evaluate it independently
    best = training.load_checkpoint(result.best_checkpoint)
    assert best.output.shape[-1] == 3
    ds = make_dataset(val_dir, preset="i3d_nl5_r50_8x8_kinetics400", training=False, batch_size=6,
                      **training.preprocessing_overrides(training.resolve_config(TINY)))
    clips, labels = next(iter(ds))
    accuracy = float(np.mean(np.argmax(best.predict(clips, verbose=0), -1) == labels.numpy()))
    assert accuracy == pytest.approx(max(history["val_accuracy"]), abs=1e-6)
    assert keras.config.dtype_policy().name == "float32"
    # the run printed where everything went
    printed = capsys.readouterr().out
    assert printed == ""  # verbose=0 is silent
    with pytest.raises(ValueError, match="already holds a run"):
        training.finetune(train_dir, config=TINY, output_dir=out, verbose=0)


def test_mixed_precision_and_frozen_stages(tmp_path, colour_data, capsys):
    import keras

    result = training.finetune(colour_data[0], config=TINY, output_dir=str(tmp_path / "mp"), epochs=1,
                               steps_per_epoch=1, mixed_precision=True, freeze_stages="res2", verbose=2)
    model = result.model
    assert result.config["derived"]["mixed_precision_policy"] == "mixed_bfloat16"  # CPU
    assert model.get_layer("res4_0_branch2a").compute_dtype == "bfloat16"
    assert model.get_layer("res4_0_branch2a").kernel.dtype == "float32"
    assert model.output.dtype == "float32"  # softmax in float32
    assert not model.get_layer("res2_0_branch2a").trainable and model.get_layer("res3_0_branch2a").trainable
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    printed = capsys.readouterr().out
    for line in ("output dir:", "class map:", "checkpoints:", "TensorBoard:", "CSV log:", "backup:", "frozen:"):
        assert line in printed
    assert str(tmp_path / "mp" / "class_names.txt") in printed


HANG_SCRIPT = textwrap.dedent("""
    import sys, time
    import keras
    from nonlocal_zoo.cli import finetune_main as main

    class HangMidEpoch(keras.callbacks.Callback):
        # after the first batch of the second epoch: signal the test, then wait to be killed
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 0:
                with open(sys.argv[1], "w") as f:
                    f.write("mid-epoch")
                time.sleep(600)

    sys.exit(main(sys.argv[2:], callbacks=[HangMidEpoch()]))
""")


def _optimizer_iterations(path):
    return int(training.load_checkpoint(path, compile=True).optimizer.iterations.numpy())


def test_kill_mid_epoch_and_resume(tmp_path, colour_data):
    train_dir = colour_data[0]
    out, marker = tmp_path / "run", tmp_path / "marker"
    script = tmp_path / "hang.py"
    script.write_text(HANG_SCRIPT)
    args = [train_dir, "--config", TINY, "--output", str(out), "--epochs", "3", "--verbose", "2"]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, str(script), str(marker), *args], env=subprocess_env(), stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "the first run never reached the middle of epoch 2"
            time.sleep(0.5)
        # killed in the middle of the second epoch: the first is finished, logged, checkpointed and backed up
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    first_rows = training.read_log(str(out / "training_log.csv"))
    assert [r["epoch"] for r in first_rows] == [0]
    with open(out / "backup" / "training_metadata.json") as f:
        assert json.load(f)["epoch"] == 1
    assert _optimizer_iterations(out / "checkpoints" / "last.keras") == 3  # 12 clips / batch 4
    first_events = set(os.listdir(out / "logs" / "train"))

    # restart: DATA and settings come from the saved run
    done = subprocess.run([sys.executable, "-m", "nonlocal_zoo.cli", "finetune", "--output", str(out), "--resume",
                           "--verbose", "2"], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Resuming at epoch 2/3" in done.stdout
    assert done.stdout.count("Epoch ") == 2 and "Epoch 2/3" in done.stdout and "Epoch 1/3" not in done.stdout
    rows = training.read_log(str(out / "training_log.csv"))
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # no finished epoch lost, none logged twice
    assert rows[0] == first_rows[0]  # the finished epoch's log is kept as it was
    # the optimizer went on from its state after epoch 1: 3 epochs x 3 steps, the killed partial epoch not counted
    assert _optimizer_iterations(out / "checkpoints" / "last.keras") == 9
    assert os.path.isfile(out / "checkpoints" / "best.keras")
    assert first_events < set(os.listdir(out / "logs" / "train"))  # the first run's TensorBoard events are kept
    assert not (out / "backup").exists()

    # a finished run has nothing to resume; asking for more epochs continues from the last checkpoint
    again = training.finetune(output_dir=str(out), resume=True, verbose=0)
    assert again.initial_epoch == 3 and len(again.history["loss"]) == 3
    with pytest.warns(UserWarning, match="epochs: 3 -> 4"):
        longer = training.finetune(output_dir=str(out), resume=True, epochs=4, verbose=0)
    assert longer.initial_epoch == 3
    assert [r["epoch"] for r in training.read_log(str(out / "training_log.csv"))] == [0, 1, 2, 3]
    assert _optimizer_iterations(out / "checkpoints" / "last.keras") == 12
