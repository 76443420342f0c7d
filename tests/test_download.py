"""Tests of nonlocal_zoo.pretrained.download against a real HTTP server on 127.0.0.1."""
import hashlib
import json
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nonlocal_zoo.pretrained import download
from nonlocal_zoo.pretrained.download import ChecksumError, DownloadError, OfflineError, fetch, parse_hash_prefix


class _Handler(BaseHTTPRequestHandler):
    """Serves `state.files[path]` with Range support, in the per-path `state.modes[path]`:

    "range" (default): honours `Range` (and `If-Range` against the ETag); "norange": ignores `Range` (always 200);
    "drop": announces the full length, sends half, closes; "drop_once": like "drop" on the first request,
    then "range"; "error<code>": answers with that status; "slow": waits 0.3 s before answering.
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
        data = state.files[path]
        etag = '"%s"' % hashlib.sha1(data).hexdigest()[:16]
        start, status = 0, 200
        requested = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if requested and mode != "norange" and (if_range is None or if_range == etag):
            start = int(re.match(r"bytes=(\d+)-$", requested).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if mode == "drop" or (mode == "drop_once" and path not in state.dropped):
            state.dropped.add(path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


class _State:
    def __init__(self):
        self.files, self.modes, self.requests, self.dropped = {}, {}, [], set()


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
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
