"""The compute dtype of inference: float32, or bfloat16 where the hardware has it.

`dtype="bfloat16"` builds the network under Keras' `mixed_bfloat16` policy: the variables (the weights) stay
float32, the convolutions and projections compute in bfloat16 (oneDNN's bf16 kernels on CPUs with AVX512_BF16 or
AMX-BF16), and the parts where precision matters stay float32: the non-local attention (affinity, softmax,
aggregation, `out` projection and its normalization) and the classifier head (`pool5`, `pred`, the softmax, the
per-location mean of the fully-convolutional head), so scores are accumulated and normalised in float32. A
BatchNormalization after a convolution is folded into it at inference (`nonlocal_zoo.layers.folding`): the kernel is
rescaled in float32 and rounded to bfloat16 once, and oneDNN adds the offset to the float32 accumulator before the
result is rounded to bfloat16 (elsewhere BatchNormalization computes in float32).

A CPU without bfloat16 instructions would emulate it, slower than float32: such a request is refused with a
`ValueError` naming the CPU flags that were found.

Example:
    >>> policy_name("bfloat16")        # on a CPU with avx512_bf16 or amx_bf16
    'mixed_bfloat16'
    >>> with policy_scope("mixed_bfloat16"):
    ...     layer = keras.layers.Dense(4)   # computes in bfloat16, float32 kernel
"""
import contextlib

import keras

DTYPES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "mixed_bfloat16": "mixed_bfloat16"}
# /proc/cpuinfo flags of CPUs with native bfloat16 arithmetic: x86 AVX512_BF16 and AMX-BF16, Arm (aarch64) BF16.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# Flags quoted in the refusal, so that the message says what the CPU does have.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
              "amx_bf16", "amx_int8", "asimd", "sve", "bf16")
CPUINFO = "/proc/cpuinfo"


def cpu_flags(path=CPUINFO):
    """The CPU feature flags of `/proc/cpuinfo` (x86 `flags`, Arm `Features`) as a set; empty when unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def _gpu_with_bf16():
    """A description of a visible TensorFlow GPU with bfloat16 (compute capability >= 8.0), or None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
        if tuple(capability) >= (8, 0):
            return f"{gpu.name} (compute capability {capability[0]}.{capability[1]})"
    return None


def bf16_support():
    """`(supported, what)`: whether bfloat16 runs natively here, and the device or CPU flags that decided it."""
    gpu = _gpu_with_bf16()
    if gpu is not None:
        return True, gpu
    flags = cpu_flags()
    native = sorted(f for f in BF16_CPU_FLAGS if f in flags)
    if native:
        return True, "CPU flags " + ", ".join(native)
    found = [f for f in SIMD_FLAGS if f in flags]
    return False, ("CPU flags found: " + " ".join(found)) if found else f"no CPU flags could be read from {CPUINFO}"


def check_bf16_support():
    """Raises a `ValueError` naming the CPU flags found where bfloat16 has no native support."""
    supported, what = bf16_support()
    if not supported:
        raise ValueError(
            "dtype='bfloat16' needs bfloat16 arithmetic in hardware: a CPU with the avx512_bf16 or amx_bf16 flag "
            f"(Arm: bf16) or a GPU of compute capability >= 8.0; this machine has none ({what}). Without it bfloat16 "
            "is emulated, slower than float32: use dtype='float32'. Received: dtype='bfloat16'")
    return what


def policy_name(dtype):
    """The Keras dtype policy of an inference `dtype`: None (keep the current policy), `"float32"` or
    `"mixed_bfloat16"` (for `"bfloat16"` / `"mixed_bfloat16"`, after checking the hardware).

    Raises:
        ValueError: another dtype, or bfloat16 on hardware without it (see `check_bf16_support`).
    """
    if dtype is None:
        return None
    name = getattr(dtype, "name", dtype)  # a keras DTypePolicy
    if name not in DTYPES:
        raise ValueError(f"`dtype` must be 'float32' or 'bfloat16' (None: float32). Received: dtype={dtype!r}")
    policy = DTYPES[name]
    if policy == "mixed_bfloat16":
        check_bf16_support()
    return policy


def is_bfloat16(policy):
    """True for a policy (or policy name) that computes in bfloat16."""
    return getattr(policy, "name", policy) in ("mixed_bfloat16", "bfloat16")


@contextlib.contextmanager
def policy_scope(policy):
    """Layers created inside use `policy` (a name or None: unchanged); the previous global policy is restored."""
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
