"""Download upstream checkpoints into the nonlocal_zoo cache and verify them before every use.

Files live in `cache_dir() / subdir / file_name`. A download goes to `<file>.part` (HTTP `Range` resume after an
interruption, clean restart when the server ignores `Range`), is hash-checked, then atomically renamed into place.
Next to each cached file, a `<file>.sha256` sidecar (JSON: sha256, sha1, size, mtime_ns) records the digests of the
verified bytes. This makes later checks cheap, and a file whose size or mtime has changed is hashed again. A
corrupt cached file is deleted and fetched again. It is never returned. A per-file lock (`<file>.lock`) stops two
processes from writing the same `.part`.

Environment:
    NONLOCAL_ZOO_HOME: cache root (default `~/.keras/nonlocal_zoo`).
    NONLOCAL_ZOO_OFFLINE=1 or HF_HUB_OFFLINE=1: use the cache only; a miss raises `OfflineError`.

Why not pooch alone: `pooch.retrieve` writes every attempt to a fresh temporary file and `pooch.HTTPDownloader`
neither sends `Range` nor exposes the response status (so a 206 partial cannot be told from a 200 full body);
its `known_hash` takes only full digests. Resume and prefix hashes are the point of this module, so the short
streaming loop below uses `requests` (pooch's own HTTP client) directly, with tqdm for progress and filelock
(used by huggingface_hub) for the lock.
"""
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

import filelock
import requests
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

ENV_HOME = "NONLOCAL_ZOO_HOME"
ENV_OFFLINE = "NONLOCAL_ZOO_OFFLINE"
DEFAULT_HOME = "~/.keras/nonlocal_zoo"

_TRUTHY = {"1", "true", "yes", "on"}
_CHUNK_BYTES = 1 << 20
_STREAM_CHUNK_BYTES = 1 << 16
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
# Seconds before retry k (k = 0, 1, ...) is RETRY_BACKOFF_S * 2**k. Tests set it to 0.
RETRY_BACKOFF_S = 1.0
_FULL_LENGTH = {"sha256": 64, "sha1": 40}
_MIN_PREFIX = 8
_HEX = re.compile(r"^[0-9a-f]+$")
# `<name>-<hex>.<ext>`: mmaction2 (`..._20220812-8e1f2148.pth`, sha256 prefix), gluon-cv (`<name>-<sha1[:8]>.pth`),
# torch.hub (`<name>-<sha256 prefix>.pth`).
_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})((?:\.[A-Za-z0-9]+)+)$")


class DownloadError(OSError):
    """A download failed (HTTP error status, connection error, truncated transfer).

    Attributes:
        url: the URL that failed.
        status: the HTTP status code, or None when no response arrived.
    """

    def __init__(self, message, *, url, status=None):
        super().__init__(message)
        self.url = url
        self.status = status


class ChecksumError(ValueError):
    """A downloaded file did not have the expected hash. The file is deleted and not cached."""


class OfflineError(FileNotFoundError):
    """Offline mode is on and the file is not in the cache (or the cached copy failed verification)."""


def cache_dir():
    """Returns the cache root: `$NONLOCAL_ZOO_HOME`, or `~/.keras/nonlocal_zoo` when unset.

    The directory is not created here; `fetch` creates what it needs.

    Example:
        >>> from nonlocal_zoo.pretrained.download import cache_dir
        >>> cache_dir() / "downloads"
    """
    return Path(os.environ.get(ENV_HOME) or DEFAULT_HOME).expanduser()


def is_offline():
    """True when `NONLOCAL_ZOO_OFFLINE` or `HF_HUB_OFFLINE` is set to 1/true/yes/on."""
    return any(os.environ.get(var, "").strip().lower() in _TRUTHY for var in (ENV_OFFLINE, "HF_HUB_OFFLINE"))


def parse_hash_prefix(file_name):
    """Returns the hex hash prefix that a published file name ends with, or None.

    mmaction2 names end with `-<sha256[:8]>` (`..._20220812-8e1f2148.pth`), gluon-cv names with `-<sha1[:8]>`
    (`i3d_resnet50_v1_kinetics400-<sha1[:8]>.pth`). The name alone does not tell which algorithm is meant:
    pass the result as `sha256_prefix=` or `sha1_prefix=` to `fetch`.

    Example:
        >>> parse_hash_prefix("i3d_r50_20220812-8e1f2148.pth")
        '8e1f2148'
    """
    match = _NAME_HASH.search(Path(str(file_name)).name)
    return match.group(1) if match else None


def hash_file(path):
    """Returns `{"sha256": hex, "sha1": hex}` for a file, read once in 1 MiB chunks."""
    digests = {"sha256": hashlib.sha256(), "sha1": hashlib.sha1()}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            for digest in digests.values():
                digest.update(chunk)
    return {name: digest.hexdigest() for name, digest in digests.items()}


def fetch(
    url,
    *,
    file_name,
    sha256=None,
    sha256_prefix=None,
    sha1=None,
    sha1_prefix=None,
    subdir="downloads",
    progress=True,
    offline=None,
    retries=3,
    timeout=60.0,
):
    """Downloads `url` into the cache once, and returns the verified local path.

    The cached file is verified before every use. Every hash you give (full digest or prefix) must match.
    A cached file is served only if it matches them, and if it still matches the digest recorded when it was
    downloaded. Otherwise it is deleted and downloaded again.

    Args:
        url: `http://` or `https://` URL.
        file_name: name of the file in the cache (a bare name, no directories).
        sha256: expected full SHA-256 (64 hex digits).
        sha256_prefix: expected leading hex digits of the SHA-256 (at least 8; mmaction2 file names).
        sha1: expected full SHA-1 (40 hex digits).
        sha1_prefix: expected leading hex digits of the SHA-1 (at least 8; gluon-cv file names).
        subdir: folder under `cache_dir()` (relative, no `..`).
        progress: show a tqdm progress bar.
        offline: True to use only the cache; None (default) reads `NONLOCAL_ZOO_OFFLINE` / `HF_HUB_OFFLINE`.
        retries: extra attempts after a connection error, truncated transfer or HTTP 408/429/5xx. Each
            attempt resumes from the partial file.
        timeout: seconds to wait for the connection and between received bytes.

    Returns:
        `pathlib.Path` of the cached file.

    Raises:
        ValueError: bad arguments (quoting the value received).
        ChecksumError: the downloaded file has the wrong hash (it is deleted, nothing is cached).
        DownloadError: HTTP error status or network failure (names the URL and the status).
        OfflineError: offline and not cached (names the file, the URL and the cache path).

    Example:
        >>> from nonlocal_zoo.pretrained.download import fetch
        >>> path = fetch(
        ...     "https://download.openmmlab.com/mmaction/v1.0/recognition/i3d/<cfg>/<cfg>_20220812-afd8f562.pth",
        ...     file_name="<cfg>_20220812-afd8f562.pth", sha256_prefix="afd8f562")
    """
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"`url` must be an http:// or https:// URL. Received: url={url!r}")
    if (
        not isinstance(file_name, str)
        or file_name in ("", ".", "..")
        or Path(file_name).name != file_name
        or "\\" in file_name
    ):
        raise ValueError(f"`file_name` must be a bare file name without directories. Received: file_name={file_name!r}")
    subdir_path = Path(subdir)
    if subdir_path.is_absolute() or ".." in subdir_path.parts:
        raise ValueError(f"`subdir` must be a relative path without '..'. Received: subdir={subdir!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"`retries` must be an integer >= 0. Received: retries={retries!r}")
    checks = _expected_hashes(sha256=sha256, sha256_prefix=sha256_prefix, sha1=sha1, sha1_prefix=sha1_prefix)
    offline = is_offline() if offline is None else bool(offline)

    target = cache_dir() / subdir_path / file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    # fcntl/msvcrt lock: released by the OS if the holder dies, so a crash leaves no stale lock behind.
    with filelock.FileLock(str(target.with_name(target.name + ".lock"))):
        problem = _check_cached(target, checks)
        if problem is None:
            return target
        if problem != "missing":
            logger.warning(
                "Cached file %s failed verification (%s); deleting it and downloading again.", target, problem
            )
            _remove(target, _sidecar(target))
        if offline:
            reason = (
                "is not in the cache"
                if problem == "missing"
                else f"was in the cache but failed verification ({problem}) and was deleted"
            )
            raise OfflineError(
                "Offline mode is on (offline=True, NONLOCAL_ZOO_OFFLINE=1 or HF_HUB_OFFLINE=1), "
                f"and '{file_name}' {reason}. "
                f"Expected at: {target} (from {url}). Download it while online, or copy the file there."
            )
        _download(url, part, retries=retries, timeout=timeout, progress=progress, desc=file_name)
        digests = hash_file(part)
        mismatch = _mismatch(digests, checks)
        if mismatch is not None:
            _remove(part, _part_meta(part))
            raise ChecksumError(
                f"The file downloaded from {url} has the wrong hash: {mismatch}. It was deleted and not cached. "
                "The upstream file may have changed, or the transfer was corrupted."
            )
        os.replace(part, target)
        _remove(_part_meta(part))
        _write_sidecar(target, digests)
        return target


def _expected_hashes(*, sha256, sha256_prefix, sha1, sha1_prefix):
    """Validates the hash arguments; returns a list of (algorithm, expected lowercase hex prefix, argument name)."""
    checks = []
    for arg, algorithm, full in (
        ("sha256", "sha256", True),
        ("sha256_prefix", "sha256", False),
        ("sha1", "sha1", True),
        ("sha1_prefix", "sha1", False),
    ):
        value = {"sha256": sha256, "sha256_prefix": sha256_prefix, "sha1": sha1, "sha1_prefix": sha1_prefix}[arg]
        if value is None:
            continue
        text = value.strip().lower() if isinstance(value, str) else None
        length = _FULL_LENGTH[algorithm]
        ok = text is not None and _HEX.match(text) is not None
        ok = ok and (len(text) == length if full else _MIN_PREFIX <= len(text) <= length)
        if not ok:
            wanted = f"{length} hex digits" if full else f"{_MIN_PREFIX} to {length} hex digits"
            raise ValueError(f"`{arg}` must be {wanted}. Received: {arg}={value!r}")
        checks.append((algorithm, text, arg))
    for algorithm in _FULL_LENGTH:
        values = [text for alg, text, _ in checks if alg == algorithm]
        if len(values) == 2 and not values[0].startswith(values[1]):
            raise ValueError(
                f"`{algorithm}` and `{algorithm}_prefix` disagree. Received: {algorithm}={values[0]!r}, "
                f"{algorithm}_prefix={values[1]!r}"
            )
    return checks


def _mismatch(digests, checks):
    """Returns a description of the first failed check, or None when all pass."""
    for algorithm, expected, arg in checks:
        if not digests[algorithm].startswith(expected):
            return f"{arg}={expected!r} expected, but the file's {algorithm} is {digests[algorithm]!r}"
    return None


def _sidecar(path):
    return path.with_name(path.name + ".sha256")


def _part_meta(part):
    return part.with_name(part.name + ".json")


def _remove(*paths):
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _write_json(path, data):
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _write_sidecar(path, digests):
    stat = path.stat()
    _write_json(_sidecar(path), {**digests, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})


def _check_cached(target, checks):
    """Returns None when `target` may be served, else a reason ("missing", or what failed)."""
    if not target.is_file():
        return "missing"
    stat = target.stat()
    record = _read_json(_sidecar(target))
    unchanged = record is not None and record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns
    if unchanged and all(isinstance(record.get(a), str) for a in _FULL_LENGTH):
        digests = {a: record[a] for a in _FULL_LENGTH}
    else:
        digests = hash_file(target)
        if record is not None and record.get("sha256") not in (None, digests["sha256"]):
            return f"its sha256 {digests['sha256']} differs from {record['sha256']} recorded at download"
    mismatch = _mismatch(digests, checks)
    if mismatch is not None:
        return mismatch
    if not unchanged:
        # First use of a file copied in by hand, or mtime touched with the same content: record it now.
        _write_sidecar(target, digests)
    return None


def _download(url, part, *, retries, timeout, progress, desc):
    """Downloads `url` into `part`, resuming what is there; retries transient failures."""
    attempts = retries + 1
    for attempt in range(attempts):
        try:
            _stream(url, part, timeout=timeout, progress=progress, desc=desc)
            return
        except _Transient as error:
            if attempt + 1 == attempts:
                kept = f" The partial file {part} was kept; calling again resumes it." if part.exists() else ""
                raise DownloadError(
                    f"Downloading {url} failed after {attempts} attempt(s): {error}.{kept}",
                    url=url,
                    status=error.status,
                ) from error
            delay = RETRY_BACKOFF_S * 2**attempt
            logger.warning("Downloading %s failed (%s); retrying in %.1f s.", url, error, delay)
            time.sleep(delay)


class _Transient(Exception):
    """A failure worth retrying (the partial file is kept for resume)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


def _stream(url, part, *, timeout, progress, desc, allow_resume=True):
    offset = part.stat().st_size if (allow_resume and part.exists()) else 0
    meta = _read_json(_part_meta(part)) or {}
    headers = {"Accept-Encoding": "identity", "User-Agent": "nonlocal_zoo"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        # If the remote file changed since the partial was written, If-Range makes the server send it whole.
        if meta.get("validator"):
            headers["If-Range"] = meta["validator"]
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True)
    except (requests.ConnectionError, requests.Timeout) as error:
        raise _Transient(f"connection error: {error}") from error
    except requests.RequestException as error:
        raise DownloadError(f"Could not request {url}: {error}", url=url) from error

    with response:
        status = response.status_code
        if status == 416 and offset:
            # Range not satisfiable: the partial is not a prefix of the current remote file. Start over.
            logger.info("Server refused to resume %s (HTTP 416); restarting from scratch.", url)
            _remove(part, _part_meta(part))
            return _stream(url, part, timeout=timeout, progress=progress, desc=desc, allow_resume=False)
        if status in _RETRY_STATUS:
            raise _Transient(f"HTTP {status} {response.reason}", status=status)
        if status >= 400:
            raise DownloadError(f"HTTP {status} {response.reason} while downloading {url}", url=url, status=status)
        if status not in (200, 206):
            raise DownloadError(
                f"Unexpected HTTP {status} {response.reason} while downloading {url}", url=url, status=status
            )

        total = _content_length(response)
        if status == 206:
            start, full = _content_range(response.headers.get("Content-Range"))
            if start is None or start > offset:
                _remove(part, _part_meta(part))
                return _stream(url, part, timeout=timeout, progress=progress, desc=desc, allow_resume=False)
            if start < offset:
                # A server may send a larger range than asked for; keep our prefix up to where it starts.
                with open(part, "r+b") as f:
                    f.truncate(start)
                offset = start
            total = full if full is not None else (None if total is None else start + total)
        else:
            if offset:
                logger.info("Server ignored the Range request for %s; downloading the whole file again.", url)
            offset = 0
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            _write_json(_part_meta(part), {"url": url, "validator": validator})

        # We compare the byte count with Content-Length ourselves. urllib3's own check raises inside a read and
        # drops the bytes of that read, which would lose up to a chunk from the partial file we want to resume.
        if hasattr(response.raw, "enforce_content_length"):
            response.raw.enforce_content_length = False
        received = offset
        mode = "ab" if offset else "wb"
        try:
            with open(part, mode) as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not progress,
            ) as bar:
                for chunk in response.iter_content(chunk_size=_STREAM_CHUNK_BYTES):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
            raise _Transient(f"transfer interrupted after {received} bytes ({error})") from error
        if total is not None and received != total:
            raise _Transient(f"truncated transfer: received {received} of {total} bytes")


def _content_length(response):
    """Content-Length as an int, or None when absent or when the body is content-encoded."""
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _content_range(value):
    """Parses `bytes START-END/TOTAL`; returns (start, total) with None for unknown parts."""
    match = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", value or "")
    if not match:
        return None, None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total
