"""Tests of nonlocal_zoo.pretrained.download against a real HTTP server on 127.0.0.1."""
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nonlocal_zoo import cli
from nonlocal_zoo.presets import PRESETS
from nonlocal_zoo.pretrained import download
from nonlocal_zoo.pretrained.download import (
    ChecksumError,
    DiskFullError,
    DownloadError,
    InvalidDownloadError,
    OfflineError,
    download_record,
    fetch,
    parse_hash_prefix,
)
from nonlocal_zoo.pretrained.loading import download_preset


class _Handler(BaseHTTPRequestHandler):
    """Serves `state.files[path]` with Range support, in the per-path `state.modes[path]`:

    "range" (default): honours `Range` (and `If-Range` against the ETag); "norange": ignores `Range` (always 200);
    "drop": announces the full length, sends half, closes; "drop_once": like "drop" on the first request,
    then "range"; "error<code>": answers with that status; "slow": waits 0.3 s before answering.

    Per-path `state.options[path]` (a dict) changes how the answer looks: "etag" ("content": a digest of the bytes,
    the default; "fixed": the same ETag whatever the bytes, as a careless server; "none": no ETag at all);
    "if_range": False ignores `If-Range` (still honours `Range`); "content_type": a Content-Type header;
    "no_length": no Content-Length (the body ends when the connection closes); "cut": send half the body and
    close; "trickle": seconds between single body bytes; "trickle_headers": seconds between single bytes of the
    status line and headers; "swap_after_drop": bytes served from then on once a "drop"/"drop_once" happened.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        state = self.server.state
        path = self.path
        state.requests.append(
            {"path": path, "range": self.headers.get("Range"), "if_range": self.headers.get("If-Range")}
        )
        if path not in state.files:
            self.send_error(404)
            return
        mode = state.modes.get(path, "range")
        if mode.startswith("error"):
            self.send_error(int(mode[len("error"):]))
            return
        if mode == "slow":
            time.sleep(0.3)
        opts = state.options.get(path, {})
        data = state.files[path]
        etag = {"content": '"%s"' % hashlib.sha1(data).hexdigest()[:16], "fixed": '"fixed"', "none": None}[
            opts.get("etag", "content")]
        start, status = 0, 200
        requested = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if_range_ok = if_range is None or not opts.get("if_range", True) or if_range == etag
        if requested and mode != "norange" and if_range_ok:
            start = int(re.match(r"bytes=(\d+)-$", requested).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        if opts.get("trickle_headers"):
            head = f"HTTP/1.1 {status} OK\r\nContent-Length: {len(body)}\r\nX-Padding: {'x' * 64}\r\n\r\n"
            self._trickle(head.encode(), opts["trickle_headers"])
            self.close_connection = True
            return
        self.send_response(status)
        if opts.get("no_length"):
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        if etag is not None:
            self.send_header("ETag", etag)
        if opts.get("content_type"):
            self.send_header("Content-Type", opts["content_type"])
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if opts.get("trickle"):
            self._trickle(body, opts["trickle"])
            self.close_connection = True
            return
        if opts.get("cut") or mode == "drop" or (mode == "drop_once" and path not in state.dropped):
            state.dropped.add(path)
            if "swap_after_drop" in opts:
                state.files[path] = opts["swap_after_drop"]
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def _trickle(self, data, delay):
        """Sends `data` one byte at a time, `delay` seconds apart, until the client goes away."""
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(delay)
        except OSError:
            pass


class _State:
    def __init__(self):
        self.files, self.modes, self.requests, self.dropped, self.options = {}, {}, [], set(), {}


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, client_address: None  # a client that hangs up is part of the tests
    httpd.state = _State()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    httpd.state.url = lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def home(zoo_home):
    return zoo_home


def _payload(size=300_000, seed=0):
    # Deterministic, incompressible-ish bytes (the server does not compress anyway).
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def _fetch(server, path, **kwargs):
    kwargs.setdefault("file_name", Path(path).name)
    kwargs.setdefault("progress", False)
    return fetch(server.url(path), **kwargs)


def test_good_download_is_cached_with_sidecar(server, home):
    data = _payload()
    server.files["/w/model.pkl"] = data
    path = _fetch(server, "/w/model.pkl", sha256=hashlib.sha256(data).hexdigest(), subdir="official")
    assert path == home / "official" / "model.pkl"
    assert path.read_bytes() == data
    record = json.loads((home / "official" / "model.pkl.sha256").read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["sha1"] == hashlib.sha1(data).hexdigest()
    assert record["size"] == len(data)
    assert not (home / "official" / "model.pkl.part").exists()
    # Second use: served from the cache, no request.
    assert _fetch(server, "/w/model.pkl", sha256=hashlib.sha256(data).hexdigest(), subdir="official") == path
    assert len(server.requests) == 1


def test_wrong_hash_rejected_and_not_cached(server, home):
    data = _payload()
    server.files["/m.pth"] = data
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ChecksumError, match=re.escape(server.url("/m.pth"))) as info:
        _fetch(server, "/m.pth", sha256=wrong)
    assert wrong in str(info.value) and hashlib.sha256(data).hexdigest() in str(info.value)
    assert sorted(p.name for p in (home / "downloads").iterdir()) == ["m.pth.lock"]
    # The right hash then downloads afresh.
    assert _fetch(server, "/m.pth", sha256=hashlib.sha256(data).hexdigest()).read_bytes() == data
    assert len(server.requests) == 2


def test_truncated_transfer_detected_and_not_served(server, home):
    data = _payload()
    server.files["/t.pkl"] = data
    server.modes["/t.pkl"] = "drop"
    with pytest.raises(DownloadError, match=re.escape(server.url("/t.pkl"))) as info:
        _fetch(server, "/t.pkl", retries=2)
    assert "3 attempt" in str(info.value)
    assert len(server.requests) == 3
    # Attempts 2 and 3 resumed what attempt 1 left: Range starts at the bytes already on disk.
    assert server.requests[0]["range"] is None
    assert server.requests[1]["range"] == f"bytes={len(data) // 2}-"
    assert not (home / "downloads" / "t.pkl").exists()
    part = home / "downloads" / "t.pkl.part"
    assert 0 < part.stat().st_size < len(data)
    # No hash given, and still the partial file is never served: offline there is nothing to use.
    with pytest.raises(OfflineError):
        _fetch(server, "/t.pkl", offline=True)


def test_interrupted_partial_resumes_on_next_call(server, home):
    data = _payload()
    server.files["/r.pkl"] = data
    server.modes["/r.pkl"] = "drop_once"
    with pytest.raises(DownloadError, match="interrupted|truncated"):
        _fetch(server, "/r.pkl", retries=0)
    part = home / "downloads" / "r.pkl.part"
    half = part.stat().st_size
    assert 0 < half < len(data)
    path = _fetch(server, "/r.pkl", sha1=hashlib.sha1(data).hexdigest())
    assert path.read_bytes() == data
    assert server.requests[-1]["range"] == f"bytes={half}-"
    assert server.requests[-1]["if_range"] is not None  # validator of the first response, sent back
    assert not part.exists()


def test_resume_within_one_call(server):
    data = _payload()
    server.files["/x.bin"] = data
    server.modes["/x.bin"] = "drop_once"
    path = _fetch(server, "/x.bin", retries=1, sha256=hashlib.sha256(data).hexdigest())
    assert path.read_bytes() == data
    assert [r["range"] for r in server.requests] == [None, f"bytes={len(data) // 2}-"]


def test_clean_restart_when_server_ignores_range(server, home):
    data = _payload()
    server.files["/n.bin"] = data
    server.modes["/n.bin"] = "norange"
    part = home / "downloads" / "n.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    # A partial file of unknown origin is resumed only when a pinned hash would catch a splice.
    path = _fetch(server, "/n.bin", sha256=hashlib.sha256(data).hexdigest())
    assert server.requests[0]["range"] == "bytes=1000-"
    assert path.read_bytes() == data  # 200 answer: written from scratch, not appended


def test_changed_remote_file_restarts_instead_of_mixing(server, home):
    old, new = _payload(seed=1), _payload(seed=2)
    server.files["/c.bin"] = old
    server.modes["/c.bin"] = "drop_once"
    with pytest.raises(DownloadError):
        _fetch(server, "/c.bin", retries=0)
    server.files["/c.bin"] = new  # new ETag: If-Range makes the server send the whole new file
    assert _fetch(server, "/c.bin").read_bytes() == new


def test_partial_larger_than_remote_restarts(server, home):
    data = _payload(size=5000)
    server.files["/s.bin"] = data
    part = home / "downloads" / "s.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 9000)
    assert _fetch(server, "/s.bin", sha1=hashlib.sha1(data).hexdigest()).read_bytes() == data
    assert [r["range"] for r in server.requests] == ["bytes=9000-", None]  # 416, then a fresh request


@pytest.mark.parametrize("corruption", ["overwrite", "truncate", "no_sidecar"])
def test_corrupted_cache_is_refetched(server, home, corruption):
    data = _payload()
    server.files["/k.pkl"] = data
    digest = hashlib.sha256(data).hexdigest()
    path = _fetch(server, "/k.pkl", sha256=digest)
    if corruption == "overwrite":
        path.write_bytes(b"\0" * len(data))  # same size, new mtime
    elif corruption == "truncate":
        with open(path, "r+b") as f:
            f.truncate(len(data) // 3)
    else:
        path.write_bytes(data[:-1] + b"!")
        (home / "downloads" / "k.pkl.sha256").unlink()
    assert _fetch(server, "/k.pkl", sha256=digest).read_bytes() == data
    assert len(server.requests) == 2


def test_corruption_detected_without_a_pinned_hash(server, home):
    data = _payload()
    server.files["/u.bin"] = data
    path = _fetch(server, "/u.bin")
    path.write_bytes(b"\1" * len(data))
    assert _fetch(server, "/u.bin").read_bytes() == data  # the sidecar's sha256 caught it
    assert len(server.requests) == 2


def test_touched_but_intact_file_is_reused(server, home):
    data = _payload()
    server.files["/i.bin"] = data
    path = _fetch(server, "/i.bin")
    os.utime(path, ns=(1, 1))
    assert _fetch(server, "/i.bin") == path
    assert len(server.requests) == 1
    assert json.loads((home / "downloads" / "i.bin.sha256").read_text())["mtime_ns"] == 1


@pytest.mark.parametrize("env_var", ["NONLOCAL_ZOO_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_mode(server, home, monkeypatch, env_var):
    data = _payload()
    server.files["/o.pkl"] = data
    digest = hashlib.sha256(data).hexdigest()
    path = _fetch(server, "/o.pkl", sha256=digest)
    monkeypatch.setenv(env_var, "1")
    assert _fetch(server, "/o.pkl", sha256=digest) == path
    with pytest.raises(OfflineError) as info:
        _fetch(server, "/missing.pkl")
    message = str(info.value)
    assert "missing.pkl" in message and server.url("/missing.pkl") in message
    assert str(home / "downloads" / "missing.pkl") in message
    assert len(server.requests) == 1


def test_offline_uses_a_file_copied_in_by_hand(server, home, monkeypatch):
    data = _payload()
    target = home / "manual" / "copied.pkl"
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    monkeypatch.setenv("NONLOCAL_ZOO_OFFLINE", "1")
    digest = hashlib.sha256(data).hexdigest()
    assert fetch("https://example.invalid/copied.pkl", file_name="copied.pkl", subdir="manual", sha256=digest) == target
    with pytest.raises(OfflineError, match="failed verification"):
        fetch("https://example.invalid/copied.pkl", file_name="copied.pkl", subdir="manual", sha256="0" * 64)
    assert not target.exists()  # a corrupt file is deleted, never served


def test_http_errors_name_url_and_status(server, home):
    with pytest.raises(DownloadError, match=r"HTTP 404 .*" + re.escape(server.url("/nope.pkl"))) as info:
        _fetch(server, "/nope.pkl")
    assert info.value.status == 404 and info.value.url == server.url("/nope.pkl")
    assert len(server.requests) == 1  # 404 is not retried
    server.files["/busy.pkl"] = b"x"
    server.modes["/busy.pkl"] = "error503"
    with pytest.raises(DownloadError, match="HTTP 503") as info:
        _fetch(server, "/busy.pkl", retries=1)
    assert info.value.status == 503 and server.url("/busy.pkl") in str(info.value)
    assert len(server.requests) == 3
    assert not (home / "downloads" / "nope.pkl").exists()


def test_connection_refused_names_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/w.pkl"
    with pytest.raises(DownloadError, match=re.escape(url)):
        fetch(url, file_name="w.pkl", retries=0, progress=False)


def test_sha256_and_sha1_prefixes(server):
    data = _payload()
    sha256, sha1 = hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest()
    # mmaction2 style (sha256 prefix) and gluon-cv style (sha1 prefix) names.
    mm_name, gl_name = f"i3d_nl_20220812-{sha256[:8]}.pth", f"i3d_nl5_resnet50_v1_kinetics400-{sha1[:8]}.pth"
    server.files["/" + mm_name] = data
    server.files["/" + gl_name] = data
    assert parse_hash_prefix(mm_name) == sha256[:8] and parse_hash_prefix(gl_name) == sha1[:8]
    assert parse_hash_prefix("i3d_nonlocal_32x2_IN_pretrain_400k.pkl") is None
    assert _fetch(server, "/" + mm_name, sha256_prefix=parse_hash_prefix(mm_name)).read_bytes() == data
    assert _fetch(server, "/" + gl_name, sha1_prefix=sha1[:8].upper(), sha256=sha256).read_bytes() == data
    bad = format((int(sha1[:8], 16) + 1) % 16**8, "08x")
    server.files["/other.pth"] = data
    with pytest.raises(ChecksumError, match="sha1_prefix"):
        _fetch(server, "/other.pth", sha1_prefix=bad)
    with pytest.raises(ChecksumError, match="sha256_prefix"):
        _fetch(server, "/other.pth", sha256_prefix=sha1[:8])  # a SHA-1 prefix is not a SHA-256 prefix


def test_cached_file_checked_against_new_expected_hash(server):
    data = _payload()
    server.files["/v.pkl"] = data
    _fetch(server, "/v.pkl")
    sha1 = hashlib.sha1(data).hexdigest()
    _fetch(server, "/v.pkl", sha1_prefix=sha1[:10])  # verified from the sidecar, no request
    assert len(server.requests) == 1
    server.files["/v.pkl"] = _payload(seed=5)
    with pytest.raises(ChecksumError):  # cached copy fails the pin, so it is re-fetched, and the new file fails too
        _fetch(server, "/v.pkl", sha1_prefix=sha1[:10][::-1])
    assert len(server.requests) == 2


def test_concurrent_fetches_download_once(server):
    data = _payload()
    server.files["/c.pkl"] = data
    server.modes["/c.pkl"] = "slow"
    results, errors = [], []

    def worker():
        try:
            results.append(_fetch(server, "/c.pkl", sha256=hashlib.sha256(data).hexdigest()))
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 3 and all(p.read_bytes() == data for p in results)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "kwargs, quoted",
    [
        (dict(file_name="a/b.pkl"), "file_name='a/b.pkl'"),
        (dict(file_name=".."), "file_name='..'"),
        (dict(file_name="x.pkl", subdir="../up"), "subdir='../up'"),
        (dict(file_name="x.pkl", sha256="abc"), "sha256='abc'"),
        (dict(file_name="x.pkl", sha1_prefix="1234567"), "sha1_prefix='1234567'"),
        (dict(file_name="x.pkl", sha256_prefix="zzzzzzzz"), "sha256_prefix='zzzzzzzz'"),
        (dict(file_name="x.pkl", sha256="a" * 64, sha256_prefix="b" * 8), "sha256_prefix='bbbbbbbb'"),
        (dict(file_name="x.pkl", retries=-1), "retries=-1"),
    ],
)
def test_bad_arguments_quote_the_value(kwargs, quoted):
    with pytest.raises(ValueError, match=re.escape(quoted)):
        fetch("https://example.invalid/x.pkl", progress=False, **kwargs)


def test_bad_url_and_default_cache_dir(monkeypatch):
    with pytest.raises(ValueError, match=re.escape("url='ftp://h/x.pkl'")):
        fetch("ftp://h/x.pkl", file_name="x.pkl")
    monkeypatch.delenv("NONLOCAL_ZOO_HOME")
    assert download.cache_dir() == Path.home() / ".keras" / "nonlocal_zoo"


# ------------------------------------------------------------------------------------------------------------------
# No garbage in the cache: presets without a published hash (issue 15). The preset's architecture is patched to a
# reduced one, and its upstream file is written in the upstream format by the independent reference in
# tests/torch_references.py (official Caffe2 blob names; pytorchvideo's own `create_resnet` state dict).
# ------------------------------------------------------------------------------------------------------------------
PKL_PRESET = "i3d_nl5_r50_8x8_kinetics400_pyslowfast"  # pyslowfast_pkl (Caffe2 pickle), no published hash
PYTH_PRESET = "i3d_r50_8x8_kinetics400_pytorchvideo"  # pytorchvideo_pyth (torch zip), no published hash
DEPTHS = [1, 1, 1, 1]
NL = [[], [0], [0], []]
NO_NL = [[], [], [], []]


def _caffe2_bytes(seed, *, nonlocal_blocks=NL, rename=None, protocol=2):
    """A reduced I3D(-NL) checkpoint as the official/PySlowFast `.pkl` (`{"blobs": {...}}`)."""
    import pickle

    from tests.torch_references import i3d_temporal_kernels, official_blobs, official_config

    cfg = official_config(stem_width=4, depths=DEPTHS, widths=[4, 8, 16, 32], conv1_kt=5,
                          temporal_kernels=i3d_temporal_kernels(DEPTHS), nonlocal_blocks=nonlocal_blocks)
    blobs = {(rename or {}).get(name, name): array for name, array in official_blobs(cfg, seed=seed).items()}
    return pickle.dumps({"blobs": blobs}, protocol=protocol)


def _pyth_bytes(tmp_path, seed):
    """A reduced I3D checkpoint as pytorchvideo's hub `.pyth` (`torch.save({"model_state": ...})`, zip format)."""
    from tests.torch_references import ptv_resnet, save_torch_checkpoint

    net = ptv_resnet(depths=DEPTHS, stem_width=4, conv1_kt=5, nonlocal_blocks=NO_NL, seed=seed)
    return save_torch_checkpoint(tmp_path / f"ptv{seed}.pyth", net.state_dict(), wrapper="model_state").read_bytes()


class _Preset:
    def __init__(self, server, name, url_path):
        self.server, self.name, self.path = server, name, url_path
        self.url = server.url(url_path)
        self.file_name = PRESETS[name]["weights"]["file_name"]

    def serve(self, data, mode="range", **options):
        self.server.files[self.path] = data
        self.server.modes[self.path] = mode
        self.server.options[self.path] = options

    def ranges(self):
        return [r["range"] for r in self.server.requests if r["path"] == self.path]


def _patch_preset(monkeypatch, server, name, url_path, nonlocal_blocks):
    pytest.importorskip("torch")
    from tests.torch_references import i3d_temporal_kernels, tiny_overrides

    arch = dict(PRESETS[name]["arch"])
    arch.update(tiny_overrides(depths=DEPTHS, stem_width=4, temporal_kernels=i3d_temporal_kernels(DEPTHS),
                               nonlocal_blocks=nonlocal_blocks))
    weights = dict(PRESETS[name]["weights"], url=server.url(url_path))
    assert not any(weights[k] for k in ("sha256", "sha256_prefix", "sha1", "sha1_prefix")), "a hashless preset"
    monkeypatch.setitem(PRESETS[name], "arch", arch)
    monkeypatch.setitem(PRESETS[name], "weights", weights)
    return _Preset(server, name, url_path)


@pytest.fixture
def pkl_preset(server, monkeypatch):
    return _patch_preset(monkeypatch, server, PKL_PRESET, "/pyslowfast/I3D_NLN_8x8_R50.pkl", NL)


@pytest.fixture
def pyth_preset(server, monkeypatch):
    return _patch_preset(monkeypatch, server, PYTH_PRESET, "/pytorchvideo/I3D_8x8_R50.pyth", NO_NL)


def _leftovers(home):
    """Everything in the download folder but the lock files."""
    folder = home / "downloads"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def _download(preset):
    return download_preset(preset.name, progress=False)


def test_html_page_for_a_hashless_preset_is_refused_and_not_cached(pkl_preset, home, capsys):
    page = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Log in to continue</body></html>\n"
    pkl_preset.serve(page, content_type="text/html; charset=utf-8")
    with pytest.raises(InvalidDownloadError) as info:
        _download(pkl_preset)
    message = str(info.value)
    assert pkl_preset.url in message and "HTML page" in message and "text/html" in message
    assert info.value.url == pkl_preset.url and "HTML page" in info.value.reason
    assert _leftovers(home) == []  # no file, no .part, no sidecar pinning the page
    # Through the CLI: one error line, exit 1 (the environment failed, not the user).
    assert cli.main(["download", pkl_preset.name]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # above it: the progress bar
    assert last.startswith("error:") and pkl_preset.url in last and "Traceback" not in err
    assert _leftovers(home) == []
    # Once the server sends the checkpoint, the same call succeeds and records what it accepted.
    good = _caffe2_bytes(seed=1)
    pkl_preset.serve(good)
    path = _download(pkl_preset)
    assert path.read_bytes() == good
    record = download_record(pkl_preset.file_name)
    assert record["sha256"] == record["first"]["sha256"] == hashlib.sha256(good).hexdigest()
    assert record["validated"].startswith(f"{pkl_preset.name}:pyslowfast_pkl:")


@pytest.mark.parametrize("kind", ["pkl", "pyth"])
def test_body_cut_short_without_content_length_is_refused(kind, request, home, tmp_path):
    preset = request.getfixturevalue(f"{kind}_preset")
    good = _caffe2_bytes(seed=1) if kind == "pkl" else _pyth_bytes(tmp_path, seed=1)
    preset.serve(good, no_length=True, cut=True)  # close-delimited body, connection closed half way
    with pytest.raises(InvalidDownloadError) as info:
        _download(preset)
    message = str(info.value)
    assert preset.url in message and f"{len(good) // 2} bytes; the server sent no Content-Length" in message
    assert f"is not usable: it is not the {PRESETS[preset.name]['weights']['format']} checkpoint of preset" in message
    assert _leftovers(home) == []
    preset.serve(good, no_length=True)  # the whole close-delimited body is fine
    assert _download(preset).read_bytes() == good


def test_checkpoint_of_another_architecture_is_refused(pkl_preset, home):
    pkl_preset.serve(_caffe2_bytes(seed=1, nonlocal_blocks=NO_NL))  # a baseline file under the NL preset's URL
    with pytest.raises(InvalidDownloadError, match="missing.*nonlocal_conv3_0_theta_w") as info:
        _download(pkl_preset)
    assert pkl_preset.url in str(info.value)
    assert _leftovers(home) == []


def test_splice_caught_by_parsing_is_downloaded_again_whole(pkl_preset, home):
    """A careless server (the same ETag for every version, If-Range useless) changes the file while a transfer is
    interrupted: the resumed bytes are a splice of two versions. Parsing catches it (the old version named a blob
    differently); the file is fetched again whole, and the splice is never cached."""
    old = _caffe2_bytes(seed=1, rename={"conv1_w": "conv1_x"}, protocol=4)
    new = _caffe2_bytes(seed=2, protocol=4)
    assert len(old) == len(new)  # same size too: only the content can tell
    pkl_preset.serve(old, "drop_once", etag="fixed", swap_after_drop=new)
    path = _download(pkl_preset)
    assert path.read_bytes() == new
    assert pkl_preset.ranges() == [None, f"bytes={len(old) // 2}-", None]
    assert _leftovers(home) == [path.name, path.name + ".sha256"]


def test_splice_caught_by_the_validator_of_the_answer(pkl_preset, home):
    """The server honours Range but ignores If-Range; the 206 answer's ETag shows the file changed: start over."""
    old, new = _caffe2_bytes(seed=1), _caffe2_bytes(seed=2)
    pkl_preset.serve(old, "drop_once", if_range=False, swap_after_drop=new)
    assert _download(pkl_preset).read_bytes() == new
    assert pkl_preset.ranges() == [None, f"bytes={len(old) // 2}-", None]


def test_no_resume_without_a_validator_or_a_hash(pkl_preset, home):
    """No ETag/Last-Modified and no hash: a splice could not be caught, so the partial file is not resumed."""
    old, new = _caffe2_bytes(seed=1), _caffe2_bytes(seed=2)
    pkl_preset.serve(old, "drop_once", etag="none", swap_after_drop=new)
    assert _download(pkl_preset).read_bytes() == new
    assert pkl_preset.ranges() == [None, None]


def test_cached_file_corrupted_in_place_with_same_size_and_mtime(pkl_preset, home, monkeypatch):
    good = _caffe2_bytes(seed=1)
    pkl_preset.serve(good)
    path = _download(pkl_preset)
    before = path.stat()
    with open(path, "r+b") as f:  # flip bytes in the middle of an array, in place
        f.seek(len(good) // 2)
        chunk = f.read(16)
        f.seek(len(good) // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    # Offline: an error, never the changed file.
    with monkeypatch.context() as m:
        m.setenv("NONLOCAL_ZOO_OFFLINE", "1")
        with pytest.raises(OfflineError, match="failed verification.*differs from"):
            _download(pkl_preset)
    assert not path.exists()
    # Online: fetched again.
    assert _download(pkl_preset).read_bytes() == good
    assert len(pkl_preset.ranges()) == 2


def test_garbage_pinned_by_an_old_sidecar_is_not_served(pkl_preset, home, monkeypatch):
    """What the cache holds after the bug this fixes: an HTML page cached as final, with a sidecar recording its own
    hash. It is recognised as corrupt (offline: an error naming the reason), then replaced by the real file."""
    page = b"<html><body>502 Bad Gateway</body></html>" * 10
    target = home / "downloads" / pkl_preset.file_name
    target.parent.mkdir(parents=True)
    target.write_bytes(page)
    stat = target.stat()
    (home / "downloads" / (pkl_preset.file_name + ".sha256")).write_text(json.dumps(
        {**download.hash_file(target), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
    with monkeypatch.context() as m:
        m.setenv("NONLOCAL_ZOO_OFFLINE", "1")
        with pytest.raises(OfflineError, match="failed verification.*HTML page"):
            _download(pkl_preset)
    good = _caffe2_bytes(seed=1)
    pkl_preset.serve(good)
    assert _download(pkl_preset).read_bytes() == good


def test_info_shows_the_sha256_of_the_first_good_download(pkl_preset, home, capsys):
    assert cli.main(["info", pkl_preset.name]) == 0
    assert re.search(r"^  sha256 +not downloaded yet$", capsys.readouterr().out, re.MULTILINE)
    good = _caffe2_bytes(seed=1)
    pkl_preset.serve(good)
    path = _download(pkl_preset)
    digest = hashlib.sha256(good).hexdigest()
    assert cli.main(["info", pkl_preset.name]) == 0
    assert re.search(rf"^  sha256 +{digest} \(first good download, 20\d\d-", capsys.readouterr().out, re.MULTILINE)
    # The cached file is lost and the upstream file changed: info keeps the first digest and shows the new one.
    path.unlink()
    newer = _caffe2_bytes(seed=2)
    pkl_preset.serve(newer)
    _download(pkl_preset)
    assert cli.main(["info", pkl_preset.name]) == 0
    out = capsys.readouterr().out
    assert digest in out and f"now has sha256 {hashlib.sha256(newer).hexdigest()}" in out


# ------------------------------------------------------------------------------------------------------ deadline
def _run_with_watchdog(fn, limit):
    """Runs `fn()` in a thread; returns (exception or None, seconds); fails the test if it is still running."""
    box = {}

    def target():
        try:
            fn()
        except Exception as error:  # returned to the test
            box["error"] = error

    start = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"fetch still running after {limit} s"
    return box.get("error"), time.monotonic() - start


@pytest.mark.parametrize("where", ["body", "headers"])
def test_trickling_server_hits_the_overall_deadline(server, home, where):
    server.files["/t.bin"] = _payload()
    # One byte every 20 ms (body) or 200 ms (headers): never silent for `timeout`, and never done.
    server.options["/t.bin"] = {"trickle": 0.02} if where == "body" else {"trickle_headers": 0.2}
    error, seconds = _run_with_watchdog(lambda: _fetch(server, "/t.bin", deadline=1.0, timeout=5.0), limit=20)
    assert isinstance(error, DownloadError) and "deadline of 1 s" in str(error), error
    assert server.url("/t.bin") in str(error)
    assert 1.0 <= seconds < 3.0
    assert not (home / "downloads" / "t.bin").exists()


def test_trickle_deadline_from_the_environment_in_a_subprocess(server, home):
    server.files["/t.bin"] = _payload()
    server.options["/t.bin"] = {"trickle": 0.02}
    code = ("import sys; from nonlocal_zoo.pretrained.download import fetch; "
            "fetch(sys.argv[1], file_name='t.bin', progress=False)")
    env = {**os.environ, "NONLOCAL_ZOO_DOWNLOAD_DEADLINE": "1.5", "NO_PROXY": "127.0.0.1"}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code, server.url("/t.bin")], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    seconds = time.monotonic() - start
    assert done.returncode != 0 and "did not finish within the deadline of 1.5 s" in done.stderr, done.stderr[-2000:]
    assert seconds < 1.5 + 15  # interpreter start-up (imports) plus the deadline, far below the 6000 s of the trickle


# ---------------------------------------------------------------------------------------------------- disk space
class _FullDisk:
    """A file object whose writes fail with ENOSPC once `limit` bytes were written."""

    def __init__(self, f, limit):
        self.f, self.limit, self.written = f, limit, 0

    def write(self, data):
        if self.written + len(data) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _fill_disk(monkeypatch, suffix, limit):
    real_open = open

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _FullDisk(f, limit) if str(file).endswith(suffix) and mode[0] in "wa" else f

    monkeypatch.setattr(download, "open", full_open, raising=False)


def test_no_space_left_names_the_file_and_leaves_nothing(server, home, monkeypatch):
    server.files["/big.pkl"] = _payload()
    _fill_disk(monkeypatch, ".part", limit=100_000)
    with pytest.raises(DiskFullError) as info:
        _fetch(server, "/big.pkl")
    part = home / "downloads" / "big.pkl.part"
    assert str(part) in str(info.value) and server.url("/big.pkl") in str(info.value)
    assert "No space left" in str(info.value) and info.value.errno == errno.ENOSPC
    assert _leftovers(home) == []
    # The sidecar (written through a .tmp file) fails the same way: named, and no .tmp left behind.
    _fill_disk(monkeypatch, ".tmp", limit=0)
    with pytest.raises(DiskFullError, match=re.escape(str(home / "downloads" / "big.pkl.part.json"))):
        _fetch(server, "/big.pkl")
    assert _leftovers(home) == []


def test_content_length_larger_than_free_space_is_refused_first(server, home, monkeypatch):
    data = _payload()
    server.files["/big.pkl"] = data
    usage = shutil.disk_usage(home.parent)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=len(data) // 2))
    with pytest.raises(DiskFullError) as info:
        _fetch(server, "/big.pkl")
    message = str(info.value)
    assert f"needs {len(data)} bytes" in message and f"{len(data) // 2} bytes free" in message
    assert server.url("/big.pkl") in message
    assert _leftovers(home) == [] and len(server.requests) == 1
