"""Crafted checkpoints cannot crash the readers or exhaust memory, and every refused or unreadable checkpoint gives
one `error:` line and exit 2 through the CLI (issue 15, item 3).

Each file here is written byte by byte (or by torch/keras and then edited), the way an attacker would: a 35-byte
pickle calling the allow-listed `bytearray(3e9)`, a dict key nested 200,000 deep (which segfaulted the restricted
unpickler), numpy states that claim more than they hold, torch zips with the same payloads, and a `.keras` file
whose config asks for a `Lambda` layer or an unknown class.
"""
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nonlocal_zoo.presets import PRESETS, get_preset
from nonlocal_zoo.pretrained.pickle_io import (
    MAX_NESTING,
    MAX_TENSOR_BYTES,
    CheckpointLimitError,
    UnsafePickleError,
    load_caffe2_pickle,
    load_torch_state_dict,
)
from nonlocal_zoo.pretrained.validate import expected_tensors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB3 = 3_000_000_000

# bytearray(3_000_000_000): PROTO 2, GLOBAL, LONG1 (5 bytes), TUPLE1, REDUCE, STOP = 35 bytes
BYTEARRAY_3GB = b"\x80\x02c__builtin__\nbytearray\n\x8a\x05" + GIB3.to_bytes(5, "little") + b"\x85R."
# {(((...(1,)...),): 2} nested 200,000 deep: hashing the key recursed in C until the stack overflowed
DEEP_KEY = b"\x80\x02}K\x01" + b"\x85" * 200_000 + b"K\x02s."
# numpy _reconstruct(ndarray, (3e9,), 'b'): the array itself, before any data
RECONSTRUCT_3GB = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x05"
                   + GIB3.to_bytes(5, "little") + b"\x85C\x01b\x87R.")
# numpy scalar of a 2 GB void dtype (the dtype comes from a string: no size appears as an int)
SCALAR_2GB = b"\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nX\x0b\x00\x00\x00V2000000000\x85R\x85R."
# BINBYTES8 whose length field says 3 GB in a 13-byte file
LENGTH_3GB = b"\x80\x04\x8e" + struct.pack("<Q", GIB3) + b"xx"


def _object_array_pickle(claimed):
    """A real pickle of an object array of 3 items whose state then claims `claimed` items (numpy reads `claimed`
    items from the 3-item list: past its end)."""
    raw = pickle.dumps({"x": np.array([1, None, 3], dtype=object)}, protocol=2)
    assert raw.count(b"K\x03\x85") == 1
    return raw.replace(b"K\x03\x85", b"J" + struct.pack("<i", claimed) + b"\x85")


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data, match", [
    (BYTEARRAY_3GB, "bytearray with a size of 3,000,000,000"),
    (RECONSTRUCT_3GB, "_reconstruct with a size of 3,000,000,000"),
    (SCALAR_2GB, "would allocate 2,000,000,000 bytes"),
    (_object_array_pickle(400_000_000), "would allocate 3,200,000,000 bytes"),
])
def test_allocation_bombs_are_refused_before_allocating(tmp_path, data, match):
    path = _write(tmp_path, "evil.pkl", data)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointLimitError, match=match) as info:
            load_caffe2_pickle(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak:,} bytes were allocated before the refusal"
    assert str(path) in str(info.value) and "Nothing from the file was executed" in str(info.value)
    assert isinstance(info.value, ValueError)  # a bad input, for the CLI too
    assert len(BYTEARRAY_3GB) == 35


def test_bombs_are_real(tmp_path):
    # The refusals above mean something: the stdlib unpickler does allocate what these files ask for (checked at
    # 30 MB instead of 3 GB) and numpy does read past the list (checked with a list it may read).
    small = BYTEARRAY_3GB.replace(GIB3.to_bytes(5, "little"), (30 * 2**20).to_bytes(5, "little"))
    assert len(pickle.loads(small)) == 30 * 2**20
    assert pickle.loads(_object_array_pickle(3))["x"].shape == (3,)


def test_object_array_shorter_than_its_shape_is_refused(tmp_path):
    path = _write(tmp_path, "short.pkl", _object_array_pickle(4))  # 4 claimed, 3 in the list
    with pytest.raises(UnsafePickleError, match=r"shape \(4,\) needs a list of 4 items"):
        load_caffe2_pickle(path)


def test_length_field_longer_than_the_file(tmp_path):
    path = _write(tmp_path, "long.pkl", LENGTH_3GB)
    with pytest.raises(ValueError, match="expected 3000000000 bytes.*only 2 remain"):
        load_caffe2_pickle(path)


_SUBPROCESS = textwrap.dedent("""
    import sys
    from nonlocal_zoo.pretrained.pickle_io import {reader}
    try:
        {reader}(sys.argv[1])
    except Exception as error:
        print(type(error).__name__, error)
        sys.exit(3)
""")


@pytest.mark.parametrize("reader", ["load_caffe2_pickle", "load_torch_state_dict"])
def test_deep_nesting_is_refused_in_a_clean_process_exit(tmp_path, reader):
    if reader == "load_torch_state_dict":
        pytest.importorskip("torch")
        path = _torch_zip_with(tmp_path, "deep.pth", DEEP_KEY)
    else:
        path = _write(tmp_path, "deep.pkl", DEEP_KEY)
    result = subprocess.run([sys.executable, "-c", _SUBPROCESS.format(reader=reader), str(path)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    # before: SIGSEGV (returncode -11); now a typed error and an ordinary exit
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    assert result.stdout.startswith("CheckpointLimitError") and f"more than {MAX_NESTING} deep" in result.stdout


def test_bound_comes_from_the_biggest_real_tensor():
    biggest = 0
    for name, preset in PRESETS.items():
        if preset["weights"] is None:
            continue
        for shape in expected_tensors(get_preset(name)["arch"]).values():
            biggest = max(biggest, 4 * int(np.prod(shape)))  # float32
    assert biggest == 512 * 2048 * 3 * 4  # I3D res5 branch2a, 12.6 MB
    assert 2 * biggest <= MAX_TENSOR_BYTES <= 4 * biggest


def test_real_sized_tensors_still_load(tmp_path):
    blob = np.random.default_rng(0).standard_normal((512, 2048, 3, 1, 1)).astype(np.float32)
    path = tmp_path / "big.pkl"
    for protocol in (2, 4):
        with open(path, "wb") as f:
            pickle.dump({"blobs": {"res5_0_branch2a_w": blob, "res5_0_branch2a_w_momentum": blob}}, f,
                        protocol=protocol)
        got = load_caffe2_pickle(path, drop_solver_state=False)
        np.testing.assert_array_equal(got["res5_0_branch2a_w"], blob)


# ----- PyTorch files ----------------------------------------------------------------------------------------------
def _torch_zip_with(tmp_path, name, data_pkl):
    """A real torch zip checkpoint whose data.pkl is replaced by `data_pkl`."""
    torch = pytest.importorskip("torch")
    base = tmp_path / f"base_{name}"
    torch.save({"state_dict": {"w": torch.ones(3)}}, base)
    path = tmp_path / name
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            out.writestr(info, data_pkl if info.filename.endswith("data.pkl") else src.read(info))
    return path


def test_torch_zip_bombs_are_refused_before_torch_load(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")

    def never(*args, **kwargs):
        raise AssertionError("torch.load must not see the file")

    monkeypatch.setattr(torch, "load", never)
    path = _torch_zip_with(tmp_path, "evil.pth", BYTEARRAY_3GB)
    with pytest.raises(CheckpointLimitError, match="bytearray with a size of 3,000,000,000"):
        load_torch_state_dict(path)
    # a storage that claims 3e9 floats
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth") as src:
        pkl = next(n for n in src.namelist() if n.endswith("data.pkl"))
        raw = src.read(pkl)
    assert raw.count(b"K\x02t") == 1  # ('storage', FloatStorage, '0', 'cpu', 2): the element count
    big = _torch_zip_with(tmp_path, "storage.pth", raw.replace(b"K\x02t", b"\x8a\x05" + GIB3.to_bytes(5, "little") + b"t"))
    with pytest.raises(CheckpointLimitError, match="storage claims"):
        load_torch_state_dict(big)


def test_torch_refusal_has_no_advice_to_turn_the_check_off(tmp_path):
    pytest.importorskip("torch")
    path = _torch_zip_with(tmp_path, "system.pth", b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R.")
    with pytest.raises(UnsafePickleError) as info:
        load_torch_state_dict(path)
    message = str(info.value)
    assert "posix.system" in message and str(path) in message
    assert "weights_only" not in message and "arbitrary code" not in message


def test_damaged_torch_zip_is_a_value_error(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.ones(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=str(path)):
        load_torch_state_dict(path)


# ----- Through the CLI ----------------------------------------------------------------------------------------
def _cli(*argv, cwd):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run([sys.executable, "-m", "nonlocal_zoo.cli", *map(str, argv)], capture_output=True,
                            text=True, timeout=300, cwd=cwd, env=env)
    return result


def _assert_one_error_line(result, *needles):
    err = result.stderr
    assert result.returncode == 2, (result.returncode, err[-3000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert "Traceback" not in err + result.stdout and "weights_only" not in err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(scope="module")
def evil_files(tmp_path_factory):
    """The crafted files of this module, a tiny clip, and a `.keras` file whose config was edited."""
    import keras

    from nonlocal_zoo.models import create_model
    from nonlocal_zoo.synthetic import write_clip

    folder = tmp_path_factory.mktemp("evil")
    files = {"bytearray": _write(folder, "evil.pkl", BYTEARRAY_3GB), "deep": _write(folder, "deep.pkl", DEEP_KEY)}
    clip = np.random.default_rng(0).integers(0, 255, (8, 40, 48, 3), dtype=np.uint8)
    files["clip"] = Path(write_clip(folder / "clip.mp4", clip, fps=4))
    good = folder / "good.keras"
    keras.saving.save_model(create_model("tiny_nl_i3d", input_shape=(4, 32, 32, 3)), good)
    for name, edit in (("lambda", _inject_lambda), ("class", _inject_class)):
        files[name] = folder / f"{name}.keras"
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(files[name], "w") as out:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == "config.json":
                    data = json.dumps(edit(json.loads(data))).encode()
                out.writestr(info, data)
    return files


def _inject_lambda(config):
    """Replaces a pooling layer by a Lambda layer whose function prints "evil!" (serialised by Keras itself)."""
    import keras

    layers = config["config"]["layers"]
    pool = next(layer for layer in layers if layer["class_name"] == "MaxPooling3D")
    evil = keras.layers.Lambda(lambda x: (print("evil!"), x)[1], name=pool["config"]["name"])
    serialized = keras.saving.serialize_keras_object(evil)
    assert serialized["config"]["function"]["class_name"] == "__lambda__"  # bytecode inside the config
    pool.update({k: v for k, v in serialized.items() if k != "build_config"})
    return config


def _inject_class(config):
    layers = config["config"]["layers"]
    pool = next(layer for layer in layers if layer["class_name"] == "MaxPooling3D")
    pool.update(class_name="system", module="os", registered_name="system")
    return config


def test_cli_convert_refused_pickles_exit_2(evil_files, tmp_path):
    out = tmp_path / "x.weights.h5"
    _assert_one_error_line(_cli("convert", evil_files["bytearray"], "--model", "tiny_nl_i3d", "--out", out,
                                cwd=tmp_path), "bytearray", "evil.pkl")
    _assert_one_error_line(_cli("convert", evil_files["deep"], "--model", "tiny_nl_i3d", "--out", out,
                                cwd=tmp_path), "deep", "deep.pkl")
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


def test_cli_weights_refused_pickle_and_torch_file_exit_2(evil_files, tmp_path):
    pytest.importorskip("torch")
    _assert_one_error_line(_cli("classify", evil_files["clip"], "--model", "tiny_nl_i3d", "--weights",
                                evil_files["bytearray"], cwd=tmp_path), "evil.pkl")
    system = _torch_zip_with(tmp_path, "system.pth", b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R.")
    _assert_one_error_line(_cli("classify", evil_files["clip"], "--model", "tiny_nl_i3d", "--weights", system,
                                cwd=tmp_path), "system.pth", "posix.system")


@pytest.mark.parametrize("kind, needle", [("lambda", "Lambda"), ("class", "system")])
def test_cli_keras_file_with_injected_config_exit_2(evil_files, tmp_path, kind, needle):
    marker = "evil!"  # what the injected Lambda would print
    result = _cli("classify", evil_files["clip"], "--model", "tiny_nl_i3d", "--weights", evil_files[kind],
                  cwd=tmp_path)
    _assert_one_error_line(result, f"{kind}.keras", needle)
    assert marker not in result.stdout
    result = _cli("classify", evil_files["clip"], "--model", evil_files[kind], cwd=tmp_path)
    _assert_one_error_line(result, f"{kind}.keras")
    assert marker not in result.stdout


def test_keras_loader_names_the_file(evil_files):
    from nonlocal_zoo.pretrained.convert import KerasFileError, load_keras_model

    for kind in ("lambda", "class"):
        with pytest.raises(KerasFileError, match=f"{kind}.keras"):
            load_keras_model(evil_files[kind])
    with pytest.raises(FileNotFoundError):
        load_keras_model(evil_files["clip"].with_name("missing.keras"))
    cut = evil_files["clip"].with_name("cut.keras")
    cut.write_bytes(evil_files["lambda"].read_bytes()[:1000])
    with pytest.raises(KerasFileError, match="cut.keras"):
        load_keras_model(cut)
