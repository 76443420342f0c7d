"""Import pytorchvideo's model builders as an independent PyTorch reference.

`pytorchvideo.models` imports `torchvision.ops.RoIAlign` (only for its detection head, which we never use), and
PyPI's torchvision does not import beside the pinned CPU torch. A placeholder module stands in for that one symbol.
"""
import sys
import types

import pytest

torch = pytest.importorskip("torch")

if "torchvision" not in sys.modules:
    try:
        import torchvision  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        stub = types.ModuleType("torchvision")
        stub_ops = types.ModuleType("torchvision.ops")

        class RoIAlign:  # noqa: D401 - placeholder, never instantiated by our references
            def __init__(self, *args, **kwargs):
                raise RuntimeError("torchvision.ops.RoIAlign is not available in the reference environment")

        stub_ops.RoIAlign = RoIAlign
        stub.ops = stub_ops
        sys.modules["torchvision"] = stub
        sys.modules["torchvision.ops"] = stub_ops

import pytorchvideo.layers  # noqa: E402,F401
import pytorchvideo.models  # noqa: E402,F401
