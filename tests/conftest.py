"""Shared test helpers. Video helpers: clips written with cv2.VideoWriter whose frames encode their own index."""
import numpy as np
import pytest

# Frame index code: 8 bits as a 2 x 4 grid of blocks; a set bit is a red block (R high, B low), so decoding the
# index from the R channel also checks that frames come back in RGB order.
_ON = (230, 40, 20)  # RGB


def index_frame(index, height=64, width=64):
    """uint8 RGB frame `(height, width, 3)` encoding `index` (0-255) in 2 x 4 blocks."""
    frame = np.zeros((height, width, 3), np.uint8)
    for bit in range(8):
        if (index >> bit) & 1:
            r, c = divmod(bit, 4)
            frame[r * height // 2:(r + 1) * height // 2, c * width // 4:(c + 1) * width // 4] = _ON
    return frame


def decode_index(frame):
    """Index encoded by `index_frame`, read from the centres of the blocks of an RGB frame (any size)."""
    frame = np.asarray(frame, dtype=np.float64)
    height, width = frame.shape[:2]
    value = 0
    for bit in range(8):
        r, c = divmod(bit, 4)
        cy, cx = (2 * r + 1) * height // 4, (2 * c + 1) * width // 8
        dy, dx = max(1, height // 16), max(1, width // 32)
        patch = frame[cy - dy:cy + dy + 1, cx - dx:cx + dx + 1]
        if patch[..., 0].mean() > 128:
            assert patch[..., 2].mean() < 100, "a set bit must be red: frames are not RGB"
            value |= 1 << bit
    return value


def write_index_video(path, num_frames, *, height=64, width=64, fourcc="mp4v", fps=25, offset=0):
    """Write `num_frames` index-coded frames (index `offset + t`) with cv2.VideoWriter; returns the RGB frames."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"cv2.VideoWriter cannot write {fourcc} to {path}"
    frames = [index_frame(offset + t, height, width) for t in range(num_frames)]
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))  # VideoWriter takes BGR
    writer.release()
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)


@pytest.fixture
def index_video(tmp_path):
    """Factory: `index_video(name, num_frames, **kw)` writes an index-coded clip under tmp_path; returns its path."""

    def make(name, num_frames, **kwargs):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_index_video(path, num_frames, **kwargs)
        return path

    return make


@pytest.fixture
def zoo_home(tmp_path, monkeypatch):
    """An empty NONLOCAL_ZOO_HOME cache, online mode, loopback without proxies, no retry back-off; returns its path."""
    from nonlocal_zoo.pretrained import download

    root = tmp_path / "zoo_home"
    monkeypatch.setenv("NONLOCAL_ZOO_HOME", str(root))
    monkeypatch.delenv("NONLOCAL_ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)
    return root
