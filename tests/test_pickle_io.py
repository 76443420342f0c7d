"""Tests of nonlocal_zoo.pretrained.pickle_io: Caffe2 pickles (Python 2 and 3 styles), torch state dicts, and
refusal of malicious files without executing them."""
import builtins
import os
import pickle
import re
import struct
import sys

import numpy as np
import pytest

from nonlocal_zoo.pretrained.pickle_io import UnsafePickleError, load_caffe2_pickle, load_torch_state_dict


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv1_w": rng.standard_normal((4, 3, 5, 7, 7)).astype(np.float32),
        "res_conv1_bn_riv": rng.random(4).astype(np.float32) + 0.5,
        "nonlocal_conv3_1_theta_b": rng.standard_normal(2).astype(np.float64),
        "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
        "frames": rng.integers(0, 255, (2, 2, 3), dtype=np.uint8),
        "fortran": np.asfortranarray(rng.standard_normal((3, 2)).astype(np.float32)),
        "scalar_blob": np.float32(2.5),
        "pred_w": rng.standard_normal((5, 8)).astype(np.float32),
    }


def _solver_blobs():
    return {"lr": np.array([0.01], np.float32), "model_iter": np.array([400000], np.int64),
            "conv1_w_momentum": np.zeros((4, 3, 5, 7, 7), np.float32)}


def _assert_same(got, want):
    assert list(got) == list(want)
    for name, value in want.items():
        # numpy 2 unpickles non-native byte order (protocol < 5) as native: same values, same type and size.
        assert got[name].dtype.newbyteorder("=") == np.asarray(value).dtype.newbyteorder("="), name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


# ----- Python 2 cPickle emulation -------------------------------------------------------------------------------
# Python 3's pickler cannot write what Python 2 cPickle wrote (py2 `str` for buffers, `numpy.core` names), so these
# helpers emit those opcodes by hand: the layout numpy 1.x's ndarray.__reduce__ produced under Python 2.

def _py2_pickle(obj, protocol):
    def s(raw):  # Python 2 str
        if protocol == 2:
            return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw
        return b"S" + repr(raw)[1:].encode("ascii") + b"\n"

    def i(n):
        return b"J" + struct.pack("<i", n) if protocol == 2 else b"I%d\n" % n

    def g(module, name):
        return b"c" + module + b"\n" + name + b"\n"

    def tup(items):
        return b"(" + b"".join(items) + b"t"

    false = b"\x89" if protocol == 2 else b"I00\n"

    def dtype(a):
        order, code = a.dtype.str[0], a.dtype.str[1:]
        state = tup([i(3), s(order.encode()), b"N", b"N", b"N", i(-1), i(-1), i(0)])
        return g(b"numpy", b"dtype") + tup([s(code.encode()), i(0), i(1)]) + b"R" + state + b"b"

    def value(v):
        if isinstance(v, dict):
            return b"(" + b"".join(s(k.encode()) + value(x) for k, x in v.items()) + b"d"
        a = np.asarray(v)
        data = a.tobytes(order="F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C")
        fortran = b"\x88" if (a.flags.f_contiguous and not a.flags.c_contiguous) else false
        if protocol != 2 and fortran == b"\x88":
            fortran = b"I01\n"
        new = tup([g(b"numpy", b"ndarray"), tup([i(0)]), s(b"b")])
        header = g(b"numpy.core.multiarray", b"_reconstruct") + new + b"R"
        return header + tup([i(1), tup([i(d) for d in a.shape]), dtype(a), fortran, s(data)]) + b"b"

    return (b"\x80\x02" if protocol == 2 else b"") + value(obj) + b"."


@pytest.mark.parametrize("protocol", [0, 2])
def test_python2_cpickle_files(tmp_path, protocol):
    blobs = {k: v for k, v in _blobs().items() if k != "scalar_blob"}
    raw = _py2_pickle({"blobs": {**blobs, **_solver_blobs()}}, protocol)
    path = tmp_path / "i3d_nonlocal_32x2_IN_pretrain_400k.pkl"
    path.write_bytes(raw)
    _assert_same(load_caffe2_pickle(path), blobs)
    # Independent check: the trusted stdlib path PySlowFast uses reads the same arrays.
    reference = pickle.loads(raw, encoding="latin1")["blobs"]
    _assert_same(load_caffe2_pickle(path, drop_solver_state=False), reference)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("wrapped", [True, False])
def test_python3_pickles_wrapped_or_flat(tmp_path, protocol, wrapped):
    blobs = _blobs(seed=protocol)
    content = {**blobs, **_solver_blobs()}
    path = tmp_path / "w.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": content} if wrapped else content, f, protocol=protocol)
    _assert_same(load_caffe2_pickle(path), {k: np.asarray(v) for k, v in blobs.items()})
    kept = load_caffe2_pickle(path, drop_solver_state=False)
    assert set(kept) == set(content)
    np.testing.assert_array_equal(kept["model_iter"], [400000])


def test_non_array_entries_are_skipped(tmp_path, caplog):
    path = tmp_path / "mixed.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"w": np.ones(3, np.float32), "note": "hello", "objs": np.array([None, 1], object),
                               "count": 7}}, f, protocol=2)
    out = load_caffe2_pickle(path)
    assert sorted(out) == ["count", "w"]
    assert int(out["count"]) == 7
    assert "note" in caplog.text and "objs" in caplog.text


class _Payload:
    """Unpickling this runs `func(*args)`: the shape of a real pickle exploit."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    "make, global_name",
    [
        # Protocols <= 2 write Python 3 `builtins` under its Python 2 name `__builtin__`.
        (lambda m: _Payload(builtins.eval, f"open({str(m)!r}, 'w').close()"), r"'(__builtin__|builtins)\.eval'"),
        (lambda m: _Payload(builtins.exec, f"open({str(m)!r}, 'w').close()"), r"'(__builtin__|builtins)\.exec'"),
        (lambda m: _Payload(os.system, f"touch {m}"), rf"'{os.system.__module__}\.system'"),
        (lambda m: _Payload(__import__, "os"), r"'(__builtin__|builtins)\.__import__'"),
    ],
)
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle_refused_and_not_executed(tmp_path, make, global_name, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.ones(2, np.float32), "x": make(marker)}}, f, protocol=protocol)
    with pytest.raises(UnsafePickleError) as info:
        load_caffe2_pickle(path)
    message = str(info.value)
    assert str(path) in message and re.search(global_name, message) and "Nothing from the file was executed" in message
    assert not marker.exists()


def test_payload_is_real(tmp_path):
    # Makes sure the refusal test above means something: the trusted loader does run the payload.
    marker = tmp_path / "pwned"
    raw = pickle.dumps({"x": _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()")}, protocol=2)
    pickle.loads(raw)
    assert marker.exists()


def test_codecs_encode_only_latin1(tmp_path):
    # `_codecs.encode` is allowed (Python 3 protocol<=2 pickles store bytes with it) but only for latin-1.
    path = tmp_path / "codec.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(UnsafePickleError, match="rot13"):
        load_caffe2_pickle(path)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_caffe2_pickle(tmp_path / "nope.pkl")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match=re.escape(str(garbage))):
        load_caffe2_pickle(garbage)
    listed = tmp_path / "list.pkl"
    listed.write_bytes(pickle.dumps([np.ones(2)]))
    with pytest.raises(ValueError, match="not a dict"):
        load_caffe2_pickle(listed)


# ----- PyTorch state dicts ----------------------------------------------------------------------------------------

def _torch_module():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv3d(3, 4, (3, 1, 1)), torch.nn.BatchNorm3d(4), torch.nn.Linear(4, 2))
    module[1].running_mean.uniform_()
    return torch, module


@pytest.mark.parametrize("layout", ["model_state", "state_dict", "raw"])
def test_torch_state_dict_layouts(tmp_path, layout):
    torch, module = _torch_module()
    state = module.state_dict()
    if layout == "model_state":  # PySlowFast / pytorchvideo .pyth
        obj = {"epoch": 196, "model_state": state, "optimizer_state": {"state": {}, "param_groups": []}, "cfg": "X: 1"}
    elif layout == "state_dict":  # mmaction2 .pth
        obj = {"meta": {"epoch": 100, "config": "..."}, "state_dict": state}
    else:  # gluon-cv .pth
        obj = state
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    out = load_torch_state_dict(path)
    assert list(out) == list(state)
    for name, tensor in state.items():
        assert isinstance(out[name], np.ndarray)
        np.testing.assert_array_equal(out[name], tensor.numpy(), err_msg=name)
    assert out["1.num_batches_tracked"].dtype == np.int64


def test_torch_bfloat16_becomes_float32(tmp_path):
    torch = pytest.importorskip("torch")
    weight = torch.randn(3, 2).to(torch.bfloat16)
    path = tmp_path / "bf16.pth"
    torch.save({"w": weight}, path)
    out = load_torch_state_dict(path)
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], weight.float().numpy())


def test_torch_malicious_checkpoint_refused(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()")
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": payload}, path)
    with pytest.raises(UnsafePickleError, match=re.escape(str(path))):
        load_torch_state_dict(path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="load_torch_state_dict"):  # a torch zip is not a Caffe2 pickle
        load_caffe2_pickle(path)


def test_torch_missing_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=re.escape("pip install nonlocal_zoo[torch]")):
        load_torch_state_dict(tmp_path / "x.pth")


def test_torch_without_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "empty.pth"
    torch.save({"state_dict": {"note": "nothing"}}, path)
    with pytest.raises(ValueError, match="no tensors"):
        load_torch_state_dict(path)


def test_torch_metadata_keeps_plain_records_only(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "mm.pth"
    meta = {"cfg": "model = dict(type='Recognizer3D')", "epoch": 100, "dataset_meta": {"classes": ("a", "b")}}
    torch.save({"meta": meta, "state_dict": {"w": torch.ones(2)}, "optimizer": {"state": {0: torch.zeros(2)}}},
               path)
    out = load_torch_state_dict(path)
    assert list(out) == ["w"] and out.metadata == {"meta": meta}  # no tensors kept alive in the metadata
    torch.save({"w": torch.ones(2)}, path)  # a raw state dict (gluon-cv) has no metadata
    assert load_torch_state_dict(path).metadata == {}


def test_legacy_torch_format(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "legacy.pyth"
    torch.save({"model_state": {"a": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}, path,
               _use_new_zipfile_serialization=False)  # the pre-1.6 format (scanned pickle by pickle)
    np.testing.assert_array_equal(load_torch_state_dict(path)["a"], np.arange(6.0).reshape(2, 3))
