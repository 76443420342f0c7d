"""Safe readers for upstream checkpoint files: Caffe2 `.pkl` pickles and PyTorch state dicts.

Unpickling runs whatever a file asks for, so plain `pickle.load` on a downloaded checkpoint is code execution
waiting to happen (PySlowFast reads the Caffe2 files exactly that way). `load_caffe2_pickle` uses an unpickler
that can rebuild only numpy arrays, dtypes and scalars plus plain containers. Any other global (`os.system`,
`builtins.eval`, ...) is refused before anything is called. `load_torch_state_dict` relies on
`torch.load(weights_only=True)`, PyTorch's own allow-list unpickler (safe since torch 2.6, CVE-2025-32434).
"""
import collections
import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Caffe2 solver state stored next to the weights (`lib/utils/checkpoints.py` saves every blob); never weights.
_SOLVER_BLOBS = ("lr", "model_iter")
_SOLVER_SUFFIX = "_momentum"


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global outside the allow-list, or torch's weights-only loader refused it.

    Nothing from the file was executed. (A `ValueError` too: a bad input file, not a bug.)
    """


class CheckpointLimitError(UnsafePickleError):
    """A checkpoint asks for more than any real checkpoint needs: an allocation above the size bound, or objects
    nested deeper than the bound. Refused before the allocation (or the deep object) is made."""


def _latin1_encode(obj, encoding="latin1", errors="strict"):
    """Stand-in for `_codecs.encode`, which Python 3 protocol 0-2 pickles use to store `bytes`.

    Only the latin-1 codec is allowed: other codec names could pull in other modules.
    """
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(
            f"_codecs.encode({type(obj).__name__}, {encoding!r}) (only latin-1 text may be encoded)"
        )
    return obj.encode("latin-1", errors)


def _numpy_globals():
    reconstruct = np.ndarray.__reduce__(np.zeros(()))[0]  # numpy(._core).multiarray._reconstruct
    scalar = np.float32(0).__reduce__()[0]  # numpy(._core).multiarray.scalar
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy(._core).numeric._frombuffer (protocol 5)
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    # numpy 1.x pickles (and Python 2 cPickle files) say `numpy.core`; numpy 2 writes `numpy._core`.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


def _container_globals():
    allowed = {("_codecs", "encode"): _latin1_encode, ("collections", "OrderedDict"): collections.OrderedDict}
    # Python 2 names (`__builtin__`) arrive unmapped in find_class, so list both spellings.
    for module in ("builtins", "__builtin__"):
        for name, value in (("set", set), ("frozenset", frozenset), ("complex", complex), ("bytearray", bytearray)):
            allowed[(module, name)] = value
    return allowed


_ALLOWED_GLOBALS = {**_numpy_globals(), **_container_globals()}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals, from a fixed table (no import happens)."""

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"the global '{module}.{name}'") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"persistent id {pid!r} (PyTorch zip/legacy checkpoints need load_torch_state_dict)")


def restricted_pickle_load(file, *, encoding="latin1"):
    """`pickle.load` that rebuilds only numpy arrays/dtypes/scalars and plain containers.

    Args:
        file: a binary file object.
        encoding: how Python 2 `str` objects are decoded. Use "latin1" (the default), which numpy needs to read
            Python 2 array buffers.

    Raises:
        UnsafePickleError: the pickle references any other global (nothing is executed).
    """
    return _RestrictedUnpickler(file, encoding=encoding).load()


def load_caffe2_pickle(path, *, drop_solver_state=True):
    """Reads an official Caffe2 `.pkl` checkpoint (video-nonlocal-net, PySlowFast) into numpy arrays.

    The files are Python 2 cPickle dumps of `{"blobs": {name: ndarray}}` (flat `{name: ndarray}` dicts are
    accepted too). They are read with a restricted unpickler and `encoding="latin1"`.

    Args:
        path: path of the `.pkl` file.
        drop_solver_state: drop the solver blobs `lr`, `model_iter` and `*_momentum`. PySlowFast's loader also
            skips these.

    Returns:
        dict mapping blob name to `np.ndarray`, in file order. Conv weights keep the Caffe2 layout
        `[out, in, kT, kH, kW]`.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the file references a global outside the allow-list (nothing was executed). The
            message names the file and the global.
        ValueError: not a readable pickle, or no arrays inside.

    Example:
        >>> from nonlocal_zoo.pretrained.pickle_io import load_caffe2_pickle
        >>> blobs = load_caffe2_pickle("i3d_nonlocal_32x2_IN_pretrain_400k.pkl")
        >>> blobs["conv1_w"].shape
        (64, 3, 5, 7, 7)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such checkpoint file: {path}")
    if zipfile.is_zipfile(path):
        raise ValueError(
            f"'{path}' is a zip archive, i.e. a PyTorch checkpoint, not a Caffe2 pickle. "
            "Read it with load_torch_state_dict()."
        )
    with open(path, "rb") as f:
        try:
            obj = restricted_pickle_load(f)
        except UnsafePickleError as error:
            raise UnsafePickleError(
                f"Refusing to load '{path}': it asks for {error}, which is not allowed (a weights file needs only "
                "numpy arrays, dtypes, scalars and plain containers). Nothing from the file was executed."
            ) from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
            raise ValueError(f"Could not read '{path}' as a Caffe2 pickle: {type(error).__name__}: {error}") from error
    if not isinstance(obj, Mapping):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}, not a dict of blobs.")
    blobs = obj["blobs"] if isinstance(obj.get("blobs"), Mapping) else obj
    arrays, skipped = {}, []
    for key, value in blobs.items():
        name = key.decode("latin-1") if isinstance(key, bytes) else key
        if not isinstance(name, str):
            skipped.append(repr(key))
            continue
        if drop_solver_state and (name in _SOLVER_BLOBS or name.endswith(_SOLVER_SUFFIX)):
            continue
        if isinstance(value, (np.ndarray, np.generic, int, float)) and np.asarray(value).dtype != object:
            arrays[name] = np.asarray(value)
        else:
            skipped.append(name)
    if skipped:
        logger.warning("%s: ignored %d entries that are not numeric arrays: %s", path, len(skipped), skipped[:10])
    if not arrays:
        raise ValueError(f"'{path}' contains no numeric arrays. Top-level keys: {list(obj)[:20]}")
    return arrays


def load_torch_state_dict(path):
    """Reads a PyTorch checkpoint (`.pth`, `.pyth`) into numpy arrays, without running code from the file.

    Uses `torch.load(path, map_location="cpu", weights_only=True)` and unwraps `model_state` (PySlowFast,
    pytorchvideo), `state_dict` (mmaction2) or takes a raw state dict (gluon-cv). Non-tensor entries are left
    out. bfloat16 tensors are returned as float32, since numpy has no bfloat16.

    Args:
        path: path of the checkpoint.

    Returns:
        dict mapping parameter/buffer name to `np.ndarray`, in file order.

    Raises:
        ImportError: torch is not installed (`pip install nonlocal_zoo[torch]`).
        UnsafePickleError: torch's weights-only loader refused the file (nothing was executed).
        ValueError: no tensors found.

    Example:
        >>> from nonlocal_zoo.pretrained.pickle_io import load_torch_state_dict
        >>> state = load_torch_state_dict("I3D_8x8_R50.pyth")
        >>> state["blocks.0.conv.weight"].shape
        (64, 3, 5, 7, 7)
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "Reading PyTorch checkpoints requires torch. Install it with: pip install nonlocal_zoo[torch]"
        ) from error
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such checkpoint file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafePickleError(
            f"Refusing to load '{path}': torch.load(weights_only=True) rejected it, so nothing from the file was "
            f"executed. Details: {error}"
        ) from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}, not a state dict.")
    state = obj
    for wrapper in ("model_state", "state_dict"):
        if isinstance(obj.get(wrapper), Mapping):
            state = obj[wrapper]
            break
    arrays = {}
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype == torch.bfloat16:
                value = value.float()
            arrays[str(name)] = value.numpy()
    if not arrays:
        raise ValueError(f"'{path}' contains no tensors. Top-level keys: {list(obj)[:20]}")
    return arrays
