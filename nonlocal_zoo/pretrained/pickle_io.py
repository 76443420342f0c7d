"""Safe readers for upstream checkpoint files: Caffe2 `.pkl` pickles and PyTorch state dicts.

Unpickling runs whatever a file asks for, so plain `pickle.load` on a downloaded checkpoint is code execution
waiting to happen (PySlowFast reads the Caffe2 files exactly that way). `load_caffe2_pickle` uses an unpickler
that can rebuild only numpy arrays, dtypes and scalars plus plain containers. Any other global (`os.system`,
`builtins.eval`, ...) is refused before anything is called. `load_torch_state_dict` relies on
`torch.load(weights_only=True)`, PyTorch's own allow-list unpickler (safe since torch 2.6, CVE-2025-32434).

Allow-listed code can still be asked for too much: `bytearray(3_000_000_000)` is 35 bytes of pickle, a tuple
nested 200,000 deep crashes CPython when it is hashed as a dict key, and a numpy object array whose state claims
more elements than its list holds reads past the list. So before anything is unpickled, `scan_pickle` walks the
opcodes without building objects and refuses nesting deeper than `MAX_NESTING` and any size asked of a
constructor (call arguments, PyTorch storage sizes) above `MAX_TENSOR_BYTES`; while unpickling, every allocation
is checked against the same bound and against a budget for the whole file. Both raise `CheckpointLimitError`.
"""
import collections
import io
import logging
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Caffe2 solver state stored next to the weights (`lib/utils/checkpoints.py` saves every blob); never weights.
_SOLVER_BLOBS = ("lr", "model_iter")
_SOLVER_SUFFIX = "_momentum"

# The biggest tensor of any zoo checkpoint is an I3D R101 res5 `branch2a` kernel, 512 x 2048 x 3 x 1 x 1 float32
# = 12.6 MB (its `_momentum` twin is as big); tests/test_pickle_io.py checks this against the presets. Twice that,
# rounded up, bounds every single allocation a checkpoint may ask for (elements or bytes).
MAX_TENSOR_BYTES = 32 * 2**20
# Real checkpoints nest ~6 deep ({"blobs": {name: ndarray(state (shape (dims)))}}); mmengine metadata a few more.
MAX_NESTING = 64
_MAX_ZIP_RATIO = 4  # a torch zip's records are stored, not compressed: unpacked size ~ file size


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global outside the allow-list, or torch's weights-only loader refused it.

    Nothing from the file was executed. (A `ValueError` too: a bad input file, not a bug.)
    """


class CheckpointState(dict):
    """`{name: np.ndarray}` as a reader returns it, plus `metadata`: the file's non-tensor records (e.g.
    mmaction2's `meta`, with the training config), or an empty dict."""

    def __init__(self, *args, metadata=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.metadata = dict(metadata or {})


class PickleFormatError(ValueError):
    """Not a well-formed pickle (truncated, unknown opcodes, a length field longer than the file)."""


class CheckpointLimitError(UnsafePickleError):
    """A checkpoint asks for more than any real checkpoint needs: an allocation above the size bound, or objects
    nested deeper than the bound. Refused before the allocation (or the deep object) is made."""


# ----------------------------------------------------------------------------------------------------------------
# Opcode scan: nesting depth and sizes, before anything is built
# ----------------------------------------------------------------------------------------------------------------
class _Entry:
    """What the scan knows of one stack value: its nesting depth, the largest int inside it, a global's name or a
    short string's text."""

    __slots__ = ("depth", "maxint", "text")

    def __init__(self, depth=0, maxint=0, text=None):
        self.depth, self.maxint, self.text = depth, maxint, text


_INTS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
            "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}
_SCALARS = {"NONE", "NEWTRUE", "NEWFALSE", "FLOAT", "BINFLOAT", "NEXT_BUFFER", "EXT1", "EXT2", "EXT4"}
_EMPTY = {"EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_SET"}
_FROM_MARK = {"TUPLE", "LIST", "DICT", "FROZENSET"}
_INTO_FROM_MARK = {"APPENDS", "SETITEMS", "ADDITEMS"}
# PyTorch storage element sizes by storage type name (for the sizes in persistent ids); others count 8 bytes.
_STORAGE_BYTES = {"Untyped": 1, "Half": 2, "BFloat16": 2, "Float": 4, "Int": 4, "Short": 2, "Char": 1, "Byte": 1,
                  "Bool": 1}


def _limit(message):
    return CheckpointLimitError(message)


class _Scan:
    def __init__(self, what, max_bytes, max_depth):
        self.what, self.max_bytes, self.max_depth = what, max_bytes, max_depth
        self.stack, self.marks, self.memo = [], [], {}

    def push(self, entry):
        if entry.depth > self.max_depth:
            raise _limit(
                f"Refusing to load {self.what}: it nests objects more than {self.max_depth} deep (real checkpoints "
                "nest fewer than 10), which could crash the reader. Nothing from the file was executed."
            )
        self.stack.append(entry)

    def pop(self, n=1):
        if len(self.stack) < n:
            raise ValueError("stack underflow")
        items = self.stack[len(self.stack) - n:]
        del self.stack[len(self.stack) - n:]
        return items

    def pop_mark(self):
        if not self.marks:
            raise ValueError("no MARK")
        items, self.stack = self.stack, self.marks.pop()
        return items

    @staticmethod
    def combine(items, extra=1):
        # a tuple keeps the name of a storage type inside it: PyTorch's persistent ids are
        # ('storage', <storage type>, key, location, numel)
        storage = next((e.text for e in items if e.text and e.text.endswith("Storage")), None)
        return _Entry(max((e.depth for e in items), default=0) + extra, max((e.maxint for e in items), default=0),
                      storage)

    def grow(self, container, items):
        """A container mutated in place (APPEND, SETITEM, BUILD, ...): memo references see the change too."""
        inner = self.combine(items)
        container.depth = max(container.depth, inner.depth)
        container.maxint = max(container.maxint, inner.maxint)
        if container.depth > self.max_depth:
            self.push(container)  # raises

    def check_call(self, func, args):
        if args.maxint > self.max_bytes:
            raise _limit(
                f"Refusing to load {self.what}: it calls {func.text or 'a constructor'} with a size of "
                f"{args.maxint:,}, above the bound of {self.max_bytes:,} (the biggest tensor of any zoo checkpoint "
                "is 12.6 MB). Nothing from the file was executed and nothing was allocated."
            )

    def check_persistent_id(self, pid):
        kind = (pid.text or "").split(".")[-1].replace("Storage", "")
        size = _STORAGE_BYTES.get(kind, 8) * pid.maxint
        if size > self.max_bytes:
            raise _limit(
                f"Refusing to load {self.what}: a tensor storage claims {size:,} bytes, above the bound of "
                f"{self.max_bytes:,}. Nothing from the file was executed and nothing was allocated."
            )

    def step(self, name, arg):
        """Applies one opcode's effect on the stack (one branch per opcode family)."""
        if name in _INTS:
            self.push(_Entry(0, abs(arg)))
        elif name in _STRINGS:
            text = arg if isinstance(arg, str) and len(arg) <= 256 else None
            self.push(_Entry(0, 0, text))
        elif name in _SCALARS:
            self.push(_Entry())
        elif name in _EMPTY:
            self.push(_Entry(1))
        elif name == "MARK":
            self.marks.append(self.stack)
            self.stack = []
        elif name in _FROM_MARK:
            self.push(self.combine(self.pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            self.push(self.combine(self.pop(int(name[-1]))))
        elif name in _INTO_FROM_MARK:
            items = self.pop_mark()
            if not self.stack:
                raise ValueError(f"{name} without a container")
            self.grow(self.stack[-1], items)
        elif name in ("APPEND", "SETITEM", "BUILD"):
            items = self.pop(1 if name != "SETITEM" else 2)
            if not self.stack:
                raise ValueError(f"{name} without a target")
            self.grow(self.stack[-1], items)
        elif name == "GLOBAL":
            self.push(_Entry(0, 0, arg.replace(" ", ".")))
        elif name == "STACK_GLOBAL":
            module, qualname = self.pop(2)
            self.push(_Entry(0, 0, f"{module.text}.{qualname.text}"))
        elif name in ("REDUCE", "NEWOBJ"):
            func, args = self.pop(2)
            self.check_call(func, args)
            self.push(self.combine([func, args]))
        elif name == "NEWOBJ_EX":
            cls, args, kwargs = self.pop(3)
            self.check_call(cls, self.combine([args, kwargs], extra=0))
            self.push(self.combine([cls, args, kwargs]))
        elif name in ("INST", "OBJ"):
            items = self.pop_mark()
            func = _Entry(0, 0, arg.replace(" ", ".")) if name == "INST" else (items[0] if items else _Entry())
            args = self.combine(items if name == "INST" else items[1:])
            self.check_call(func, args)
            self.push(self.combine([args]))
        elif name == "BINPERSID":
            (pid,) = self.pop(1)
            self.check_persistent_id(pid)
            self.push(_Entry(1))
        elif name == "PERSID":
            self.push(_Entry(1))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self.memo[arg] = self.stack[-1]
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self.memo:
                raise ValueError(f"memo key {arg} missing")
            self.push(self.memo[arg])
        elif name == "POP":
            self.pop(1)
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            self.push(self.stack[-1])
        elif name == "READONLY_BUFFER":
            pass
        elif name not in ("PROTO", "FRAME", "STOP"):
            raise ValueError(f"unknown opcode {name}")


def scan_pickle(file, *, what, max_bytes=MAX_TENSOR_BYTES, max_depth=MAX_NESTING):
    """Walks one pickle's opcodes (no object is built) and refuses what could crash the reader or exhaust memory.

    Refused: objects nested deeper than `max_depth`; a call (`REDUCE`, `NEWOBJ`, ...) or a PyTorch storage whose
    arguments hold a size above `max_bytes` (e.g. `bytearray(3_000_000_000)`).

    Args:
        file: a binary file object positioned at the pickle; it is left after the pickle's `STOP`.
        what: how to name the file in messages.
        max_bytes: the largest size any argument may ask for.
        max_depth: the deepest nesting allowed.

    Raises:
        CheckpointLimitError: a bound is exceeded (nothing was built or allocated).
        PickleFormatError: not a well-formed pickle (a ValueError).

    Example:
        >>> with open("model.pkl", "rb") as f:
        ...     scan_pickle(f, what="'model.pkl'")
    """
    scan = _Scan(what, max_bytes, max_depth)
    if _has_fileno(file) and not isinstance(file, _BoundedReader):
        file = _BoundedReader(file)  # a length field cannot make a read allocate more than the file holds
    try:
        for name, arg in _opcodes(file):
            scan.step(name, arg)
    except CheckpointLimitError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, EOFError, UnicodeDecodeError) as error:
        raise PickleFormatError(f"Could not read {what} as a pickle: {type(error).__name__}: {error}") from None


def _opcodes(file):
    """`(opcode name, argument)` of one pickle, up to its STOP (`pickletools.genops`, except that protocol-0
    `STRING` arguments, Python 2's byte strings, are not decoded as ASCII: the scan needs only their length)."""
    while True:
        code = file.read(1)
        if not code:
            raise ValueError("the pickle ends before its STOP opcode")
        op = pickletools.code2op.get(code.decode("latin-1"))
        if op is None:
            raise ValueError(f"unknown opcode {code!r} at byte {file.tell() - 1}")
        if op.arg is None:
            arg = None
        elif op.name == "STRING":
            line = file.readline()
            if not line.endswith(b"\n"):
                raise ValueError("no newline after a STRING argument")
            arg = None
        else:
            arg = op.arg.reader(file)
        yield op.name, arg
        if op.name == "STOP":
            return


class _BoundedReader(io.RawIOBase):
    """A read-only view of a file that never hands out (or lets a reader allocate for) more than is left in it."""

    def __init__(self, f):
        self.f = f
        self.end = os.fstat(f.fileno()).st_size

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), max(0, self.end - self.f.tell()))
        data = self.f.read(n)
        buffer[:len(data)] = data
        return len(data)

    def read(self, n=-1):
        left = max(0, self.end - self.f.tell())
        return self.f.read(left if n is None or n < 0 else min(n, left))

    def readline(self, size=-1):
        return self.f.readline(size)

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()


# ----------------------------------------------------------------------------------------------------------------
# The restricted unpickler
# ----------------------------------------------------------------------------------------------------------------
def _latin1_encode(obj, encoding="latin1", errors="strict"):
    """Stand-in for `_codecs.encode`, which Python 3 protocol 0-2 pickles use to store `bytes`.

    Only the latin-1 codec is allowed: other codec names could pull in other modules.
    """
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(
            f"_codecs.encode({type(obj).__name__}, {encoding!r}) (only latin-1 text may be encoded)"
        )
    return obj.encode("latin-1", errors)


_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(()))[0]  # numpy(._core).multiarray._reconstruct
_SCALAR = np.float32(0).__reduce__()[0]  # numpy(._core).multiarray.scalar
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy(._core).numeric._frombuffer (protocol 5)


class _Budget:
    """Counts the bytes the allow-listed constructors allocate; refuses one above `max_bytes` or a total above
    `total` (the file's own size plus one tensor: a checkpoint cannot need more than it stores)."""

    def __init__(self, what, max_bytes, total):
        self.what, self.max_bytes, self.total, self.used = what, max_bytes, total, 0

    def take(self, nbytes, call):
        nbytes = int(nbytes)
        if nbytes > self.max_bytes or self.used + nbytes > self.total:
            bound = (f"the bound of {self.max_bytes:,} per allocation" if nbytes > self.max_bytes
                     else f"the budget of {self.total:,} bytes for this file")
            raise _limit(
                f"Refusing to load {self.what}: {call} would allocate {nbytes:,} bytes, above {bound}. "
                "Nothing from the file was executed and nothing was allocated."
            )
        self.used += nbytes

    def dtype(self, dtype, call):
        if not isinstance(dtype, np.dtype):
            raise UnsafePickleError(f"{call} with a {type(dtype).__name__} instead of a numpy dtype")
        if dtype.itemsize > self.max_bytes:
            self.take(dtype.itemsize, call)
        return dtype


def _shape_size(shape, call):
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape):
        raise UnsafePickleError(f"{call} with shape {shape!r} (expected a tuple of non-negative ints)")
    return int(np.prod(shape, dtype=object)) if shape else 1


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves only allow-listed globals, from a fixed table (no import happens), and checks every allocation.

    The pure-Python unpickler is used (stdlib `pickle._Unpickler`) because its `BUILD` can be checked: numpy's
    `ndarray.__setstate__` trusts the shape it is given (an object array whose shape exceeds its list reads past
    the list), and a dtype's state can make it huge. Checkpoints are a few thousand opcodes, so speed is the same.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *, what, encoding, max_bytes, total):
        super().__init__(file, encoding=encoding)
        self.budget = _Budget(what, max_bytes, total)
        budget = self.budget

        def checked_bytearray(*args):
            if args and isinstance(args[0], int):
                budget.take(args[0], f"bytearray({args[0]:,})")
            return bytearray(*args)

        def checked_reconstruct(cls, shape, dtype):
            call = f"numpy _reconstruct(shape={shape!r})"
            if cls is not np.ndarray:
                raise UnsafePickleError(f"{call} of {cls!r}")
            budget.take(_shape_size(shape, call) * np.dtype(dtype).itemsize, call)
            return _RECONSTRUCT(cls, shape, dtype)

        def checked_scalar(dtype, *args):
            budget.dtype(dtype, "numpy scalar")
            if dtype.hasobject:
                raise UnsafePickleError(f"numpy scalar of the object dtype {dtype}")
            budget.take(dtype.itemsize, f"numpy scalar of {dtype}")
            return _SCALAR(dtype, *args)

        def checked_frombuffer(buf, dtype, shape, order):
            budget.dtype(dtype, "numpy _frombuffer")
            if dtype.hasobject:
                raise UnsafePickleError("numpy _frombuffer of an object dtype")
            return _FROMBUFFER(buf, dtype, shape, order)

        def checked_dtype(*args, **kwargs):
            dtype = np.dtype(*args, **kwargs)
            return budget.dtype(dtype, f"numpy dtype {dtype}")

        self.allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): checked_dtype,
                        ("_codecs", "encode"): _latin1_encode, ("collections", "OrderedDict"): collections.OrderedDict}
        # numpy 1.x pickles (and Python 2 cPickle files) say `numpy.core`; numpy 2 writes `numpy._core`.
        for package in ("numpy.core", "numpy._core"):
            self.allowed[(f"{package}.multiarray", "_reconstruct")] = checked_reconstruct
            self.allowed[(f"{package}.multiarray", "scalar")] = checked_scalar
            self.allowed[(f"{package}.numeric", "_frombuffer")] = checked_frombuffer
        # Python 2 names (`__builtin__`) arrive unmapped in find_class, so list both spellings.
        for module in ("builtins", "__builtin__"):
            for name, value in (("set", set), ("frozenset", frozenset), ("complex", complex),
                                ("bytearray", checked_bytearray)):
                self.allowed[(module, name)] = value

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"the global '{module}.{name}'") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"persistent id {pid!r} (PyTorch zip/legacy checkpoints need load_torch_state_dict)")

    def load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray):
            self._check_array_state(state)
        super().load_build()
        if isinstance(inst, np.dtype):
            self.budget.dtype(inst, f"numpy dtype state {state!r:.80}")

    dispatch[pickle.BUILD[0]] = load_build

    def _check_array_state(self, state):
        call = "numpy ndarray state"
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError(f"{call} {type(state).__name__} (expected (version, shape, dtype, fortran, data))")
        shape, dtype, data = state[-4], state[-3], state[-1]
        self.budget.dtype(dtype, call)
        size = _shape_size(shape, call)
        self.budget.take(size * dtype.itemsize, f"{call} of shape {shape}")
        if dtype.hasobject:
            # numpy reads `size` items from the list without checking its length
            if dtype != np.dtype(object) or not isinstance(data, list) or len(data) != size:
                raise UnsafePickleError(f"{call}: an object array of shape {shape} needs a list of {size} items")
        elif not isinstance(data, (bytes, bytearray, str)) or len(data) != size * dtype.itemsize:
            raise UnsafePickleError(
                f"{call}: shape {shape} of {dtype} needs {size * dtype.itemsize} bytes of data, "
                f"got {type(data).__name__} of {len(data) if hasattr(data, '__len__') else '?'}"
            )


def restricted_pickle_load(file, *, encoding="latin1", what="the pickle", max_bytes=MAX_TENSOR_BYTES,
                           max_depth=MAX_NESTING):
    """`pickle.load` that rebuilds only numpy arrays/dtypes/scalars and plain containers, within size bounds.

    The opcodes are scanned first (`scan_pickle`: nesting and sizes), then unpickled with every allocation
    checked against `max_bytes` and a budget of the file's size plus `max_bytes`.

    Args:
        file: a binary file object (seekable).
        encoding: how Python 2 `str` objects are decoded. Use "latin1" (the default), which numpy needs to read
            Python 2 array buffers.
        what: how to name the file in messages.
        max_bytes: the largest single allocation allowed.
        max_depth: the deepest nesting allowed.

    Raises:
        UnsafePickleError: the pickle references any other global (nothing is executed).
        CheckpointLimitError: a size or nesting bound is exceeded.

    Example:
        >>> with open("model.pkl", "rb") as f:
        ...     obj = restricted_pickle_load(f)
    """
    reader = _BoundedReader(file) if _has_fileno(file) else file
    start = reader.tell()
    scan_pickle(reader, what=what, max_bytes=max_bytes, max_depth=max_depth)
    end = reader.tell()
    reader.seek(start)
    unpickler = _RestrictedUnpickler(reader, what=what, encoding=encoding, max_bytes=max_bytes,
                                     total=2 * (end - start) + max_bytes)
    return unpickler.load()


def _has_fileno(file):
    try:
        file.fileno()
        return True
    except (OSError, io.UnsupportedOperation, AttributeError):
        return False


def load_caffe2_pickle(path, *, drop_solver_state=True, max_bytes=MAX_TENSOR_BYTES):
    """Reads an official Caffe2 `.pkl` checkpoint (video-nonlocal-net, PySlowFast) into numpy arrays.

    The files are Python 2 cPickle dumps of `{"blobs": {name: ndarray}}` (flat `{name: ndarray}` dicts are
    accepted too). They are read with a restricted unpickler and `encoding="latin1"`.

    Args:
        path: path of the `.pkl` file.
        drop_solver_state: drop the solver blobs `lr`, `model_iter` and `*_momentum`. PySlowFast's loader also
            skips these.
        max_bytes: the largest single tensor (allocation) allowed. Defaults to `MAX_TENSOR_BYTES`.

    Returns:
        dict mapping blob name to `np.ndarray`, in file order. Conv weights keep the Caffe2 layout
        `[out, in, kT, kH, kW]`.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the file references a global outside the allow-list (nothing was executed). The
            message names the file and the global.
        CheckpointLimitError: the file asks for an allocation or a nesting above the bounds.
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
            obj = restricted_pickle_load(f, what=f"'{path}'", max_bytes=max_bytes)
        except (CheckpointLimitError, PickleFormatError):
            raise
        except UnsafePickleError as error:
            raise UnsafePickleError(
                f"Refusing to load '{path}': it asks for {error}, which is not allowed (a weights file needs only "
                "numpy arrays, dtypes, scalars and plain containers). Nothing from the file was executed."
            ) from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                MemoryError, RecursionError) as error:
            raise ValueError(f"Could not read '{path}' as a Caffe2 pickle: {type(error).__name__}: {error}") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}, not a dict of blobs.")
    blobs = obj["blobs"] if isinstance(obj.get("blobs"), Mapping) else obj
    arrays, skipped = {}, []
    for key, value in blobs.items():
        name = key.decode("latin-1") if isinstance(key, bytes) else key
        if not isinstance(name, str):
            skipped.append(f"<{type(key).__name__} key>")
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


# ----------------------------------------------------------------------------------------------------------------
# PyTorch
# ----------------------------------------------------------------------------------------------------------------
def _check_torch_file(path, *, max_bytes):
    """Scans a torch checkpoint's pickles (zip: `*/data.pkl`; legacy: the leading pickles) and zip records
    before `torch.load` sees them."""
    what = f"'{path}'"
    if zipfile.is_zipfile(path):
        size = path.stat().st_size
        try:
            with zipfile.ZipFile(path) as archive:
                infos = archive.infolist()
                unpacked = sum(info.file_size for info in infos)
                if unpacked > _MAX_ZIP_RATIO * size + max_bytes:
                    raise _limit(
                        f"Refusing to load {what}: its zip records unpack to {unpacked:,} bytes from a {size:,}-byte "
                        "file (PyTorch stores records uncompressed). Nothing from the file was executed."
                    )
                for info in infos:
                    if info.filename.endswith(".pkl"):
                        with archive.open(info) as f:
                            scan_pickle(io.BytesIO(f.read()), what=f"{what} ({info.filename})", max_bytes=max_bytes)
                    elif info.file_size > max_bytes:
                        raise _limit(
                            f"Refusing to load {what}: record {info.filename} holds {info.file_size:,} bytes, above "
                            f"the bound of {max_bytes:,} per tensor. Nothing from the file was executed."
                        )
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as error:
            raise ValueError(f"Could not read '{path}' as a PyTorch checkpoint (zip): {error}") from None
        return
    with open(path, "rb") as f:
        # legacy format: magic number, protocol version, sys info, the object, the storage keys (then raw data)
        for _ in range(5):
            if not f.peek(1):
                break
            scan_pickle(f, what=what, max_bytes=max_bytes)


# What torch's weights-only loader refused, without its advice to switch the check off.
_TORCH_REASON = re.compile(r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+|"
                           r"Trying to [^\n]*?(?=\.\s|\.?$)|Unsupported class [\w.]+)", re.MULTILINE)


def load_torch_state_dict(path, *, max_bytes=MAX_TENSOR_BYTES):
    """Reads a PyTorch checkpoint (`.pth`, `.pyth`) into numpy arrays, without running code from the file.

    The file's pickles are scanned first (`scan_pickle`: nesting, sizes; zip records: sizes), then loaded with
    `torch.load(path, map_location="cpu", weights_only=True)`. `model_state` (PySlowFast, pytorchvideo) or
    `state_dict` (mmaction2) is unwrapped, or a raw state dict (gluon-cv) taken. Non-tensor entries are left out
    of the arrays; the top-level non-tensor records (e.g. mmaction2's `meta`) are kept as `.metadata`.
    bfloat16 tensors are returned as float32, since numpy has no bfloat16.

    Args:
        path: path of the checkpoint.
        max_bytes: the largest single tensor (allocation) allowed. Defaults to `MAX_TENSOR_BYTES`.

    Returns:
        a `CheckpointState`: dict mapping parameter/buffer name to `np.ndarray`, in file order, with
        `.metadata`.

    Raises:
        ImportError: torch is not installed (`pip install nonlocal_zoo[torch]`).
        UnsafePickleError: PyTorch's restricted loader refused the file (nothing was executed).
        CheckpointLimitError: the file asks for an allocation or a nesting above the bounds.
        ValueError: not a readable PyTorch checkpoint, or no tensors found.

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
    _check_torch_file(path, max_bytes=max_bytes)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message goes on to explain how to turn its safety off; keep only what was refused.
        found = _TORCH_REASON.search(str(error))
        reason = found.group(1) if found else "an object outside its allow-list"
        raise UnsafePickleError(
            f"Refusing to load '{path}': PyTorch's restricted loader refused it ({reason}), so nothing from the "
            "file was executed. A weights file needs only tensors and plain containers."
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, AttributeError, TypeError) as error:
        reason = " ".join(str(error).split())[:300]
        raise ValueError(
            f"Could not read '{path}' as a PyTorch checkpoint ({type(error).__name__}: {reason})"
        ) from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}, not a state dict.")
    state, wrapper_key = obj, None
    for wrapper in ("model_state", "state_dict"):
        if isinstance(obj.get(wrapper), Mapping):
            state, wrapper_key = obj[wrapper], wrapper
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
    metadata = {} if wrapper_key is None else {
        str(k): v for k, v in obj.items() if k != wrapper_key and _plain(v)  # e.g. mmaction2's `meta`, not optimizer state
    }
    return CheckpointState(arrays, metadata=metadata)


def _plain(value, depth=0):
    """True for plain data (strings, numbers, and dicts/lists/tuples of them): metadata, not tensors."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return True
    if depth < MAX_NESTING and isinstance(value, Mapping):
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    if depth < MAX_NESTING and isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    return False
