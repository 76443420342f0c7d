"""Download upstream checkpoints into the nonlocal_zoo cache and verify them before every use.

Files live in `cache_dir() / subdir / file_name`. A download goes to `<file>.part` and becomes final (an atomic
rename) only when every check passes:

- the byte count equals the `Content-Length` (or `Content-Range` total) the server announced;
- every hash given (full digest, or the prefix in an mmaction2/gluon-cv file name) matches;
- it is not an HTML page (a login, error or captive-portal page served with status 200);
- the `validate` callable accepts it. For presets this parses the file with its format's reader and checks that
  it holds the tensors of the preset's architecture (`nonlocal_zoo.pretrained.validate`). Most presets have no
  published hash, and this is what catches a body cut short or spliced from two versions of the file.

A file that fails is deleted with an error that names the URL and what was wrong. An interrupted transfer resumes
with HTTP `Range` only when a splice can be caught: the first response gave a validator (`ETag` or
`Last-Modified`, sent back as `If-Range`, and compared with the validator of the `206` answer), or a hash is
pinned. A resumed file that then fails a check is downloaded once more from scratch. What no check can catch
without a hash: a server that gives every version of a file the same validator, when both versions have the same
size and tensor layout (then the splice parses and holds the right tensors).

Next to each cached file, a `<file>.sha256` sidecar (JSON) records the sha256/sha1 of the verified bytes, the
validator key that accepted them, and the sha256 of the first good download (`download_record`, shown by
`nonlocal-zoo info`). The cached file is hashed again on every use, so a change of its bytes is caught even when its
size and mtime stayed the same. That costs one read of the file: 0.4 s for a full-size official I3D-NL5 `.pkl` (355 MB
with its solver blobs; sha256 + sha1 at ~870 MB/s on a 2-core machine), paid only when a preset's upstream file is
used, i.e. when it is converted (parsing it alone takes 1.7 s) or by `nonlocal-zoo download`. A file whose digest
equals the one recorded when `validate` accepted it is not parsed again. A cached file that fails is deleted and
fetched again (offline: `OfflineError`); it is never returned. A per-file lock (`<file>.lock`) stops two processes
from writing the same `.part`.

Every download has an overall deadline (`deadline=`, default `NONLOCAL_ZOO_DOWNLOAD_DEADLINE` or 2 hours), so a
server that trickles bytes cannot hold a call forever; `timeout=` bounds each wait for the connection or the next
bytes. Free space is checked against `Content-Length` before anything is written, and a full disk removes the
partial file and names it.

Environment:
    NONLOCAL_ZOO_HOME: cache root (default `~/.keras/nonlocal_zoo`).
    NONLOCAL_ZOO_OFFLINE=1 or HF_HUB_OFFLINE=1: use the cache only; a miss raises `OfflineError`.
    NONLOCAL_ZOO_DOWNLOAD_DEADLINE: seconds one `fetch` may spend downloading (default 7200).

Why not pooch alone: `pooch.retrieve` writes every attempt to a fresh temporary file and `pooch.HTTPDownloader`
neither sends `Range` nor exposes the response status (so a 206 partial cannot be told from a 200 full body);
its `known_hash` takes only full digests. Resume and prefix hashes are the point of this module, so the short
streaming loop below uses `requests` (pooch's own HTTP client) directly, with tqdm for progress and filelock
(used by huggingface_hub) for the lock.
"""
import datetime
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

import filelock
import requests
import urllib3
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

ENV_HOME = "NONLOCAL_ZOO_HOME"
ENV_OFFLINE = "NONLOCAL_ZOO_OFFLINE"
ENV_DEADLINE = "NONLOCAL_ZOO_DOWNLOAD_DEADLINE"
DEFAULT_HOME = "~/.keras/nonlocal_zoo"
DEFAULT_DEADLINE_S = 7200.0

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
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# Room kept free beyond the announced size (the sidecar and the file system's own needs).
_SPACE_MARGIN = 1 << 20
_HTML_START = re.compile(rb"^\s*(?:<!doctype\s+html|<html|<head|<body|<\?xml[^>]*>\s*<html)", re.IGNORECASE)


class DownloadError(OSError):
    """A download failed (HTTP error status, connection error, truncated transfer, deadline, bad content).

    Attributes:
        url: the URL that failed.
        status: the HTTP status code, or None when no response arrived.
    """

    def __init__(self, message, *, url, status=None):
        super().__init__(message)
        self.url = url
        self.status = status


class InvalidDownloadError(DownloadError):
    """The server answered, but the bytes are not the file: an HTML page, a body cut short or spliced, the wrong
    checkpoint. The file is deleted and not cached.

    Attributes:
        url: the URL.
        reason: what was wrong, in words.
    """

    def __init__(self, message, *, url, reason, status=None):
        super().__init__(message, url=url, status=status)
        self.reason = reason


class DiskFullError(DownloadError):
    """No space left for a download (checked against `Content-Length` first, or hit while writing).

    Attributes:
        path: the file that could not be written.
    """

    def __init__(self, message, *, url, path):
        super().__init__(message, url=url)
        self.errno = errno.ENOSPC
        self.path = Path(path)


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


def hash_file(path, algorithms=("sha256", "sha1")):
    """Returns `{algorithm: hex}` for a file (sha256 and sha1 by default), read once in 1 MiB chunks."""
    digests = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            for digest in digests.values():
                digest.update(chunk)
    return {name: digest.hexdigest() for name, digest in digests.items()}


def download_record(file_name, *, subdir="downloads"):
    """The sidecar record of a cached download, or None when the file was never downloaded.

    Reads `cache_dir()/subdir/<file_name>.sha256` without touching the network or hashing the file.

    Returns:
        dict with `first` (`sha256`, `size`, `url`, `utc`: the first good download, kept when the cached file is
        later deleted as corrupt and fetched again) and, while the file is cached, `sha256`, `sha1`, `size`,
        `url`, `utc` and `validated` of the current copy.

    Example:
        >>> download_record("i3d_nonlocal_8x8_IN_pretrain_400k.pkl")["first"]["sha256"]
    """
    record = _read_json(_sidecar(cache_dir() / Path(subdir) / file_name))
    if record is None:
        return None
    if not isinstance(record.get("first"), dict) and isinstance(record.get("sha256"), str):
        # Sidecar written before first-download records existed: its file is the first one we know of.
        record["first"] = {"sha256": record["sha256"], "size": record.get("size"), "url": record.get("url"),
                           "utc": record.get("utc")}
    return record if isinstance(record.get("first"), dict) else None


def describe_download(file_name, *, subdir="downloads"):
    """One line for `nonlocal-zoo info`: the sha256 of the first good download, or 'not downloaded yet'.

    Example:
        >>> describe_download("I3D_8x8_R50.pyth")
        'not downloaded yet'
    """
    record = download_record(file_name, subdir=subdir)
    if record is None:
        return "not downloaded yet"
    first = record["first"]
    when = f", {first['utc']}" if first.get("utc") else ""
    text = f"{first['sha256']} (first good download{when})"
    current = record.get("sha256")
    if current is None:
        text += "; not in the cache now"
    elif current != first["sha256"]:
        text += f"; the cached file now has sha256 {current}"
    return text


def _utc_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _deadline_seconds(deadline):
    if deadline is None:
        text = os.environ.get(ENV_DEADLINE, "").strip()
        if not text:
            return DEFAULT_DEADLINE_S
        try:
            deadline = float(text)
        except ValueError:
            raise ValueError(f"{ENV_DEADLINE} must be a number of seconds. Received: {ENV_DEADLINE}={text!r}") from None
        if not deadline > 0:
            raise ValueError(f"{ENV_DEADLINE} must be > 0 seconds. Received: {ENV_DEADLINE}={text!r}")
        return deadline
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not deadline > 0:
        raise ValueError(f"`deadline` must be a number of seconds > 0. Received: deadline={deadline!r}")
    return float(deadline)


class _Clock:
    """The overall deadline of one `fetch`."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self):
        return self.end - time.monotonic()

    def expired(self):
        return self.remaining() <= 0


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
    validate=None,
    deadline=None,
):
    """Downloads `url` into the cache once, and returns the verified local path.

    The cached file is verified before every use: it is hashed again and must match every hash you give (full
    digest or prefix) and the digest recorded when it was downloaded; a file not yet accepted by `validate` is
    validated. Otherwise it is deleted and downloaded again. A new download becomes final only when its size
    matches the announced `Content-Length`, its hashes match, it is not an HTML page, and `validate` accepts it.

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
            attempt resumes from the partial file (when a splice can be detected, see the module docstring).
        timeout: seconds to wait for the connection and between received bytes.
        validate: optional `validate(path)` that raises (with a message saying what is wrong) when the file is not
            the one wanted, e.g. `nonlocal_zoo.pretrained.validate.preset_validator(name)`. When it has a
            `cache_key` attribute, the key is recorded with the file's digests, and an unchanged file is not
            validated again.
        deadline: seconds the whole call may spend downloading (all attempts); None reads
            `NONLOCAL_ZOO_DOWNLOAD_DEADLINE` (default 7200).

    Returns:
        `pathlib.Path` of the cached file.

    Raises:
        ValueError: bad arguments (quoting the value received).
        ChecksumError: the downloaded file has the wrong hash (it is deleted, nothing is cached).
        InvalidDownloadError: the download is not the file (HTML page, cut short, refused by `validate`); it is
            deleted and nothing is cached. Names the URL and the reason.
        DiskFullError: not enough free space for the announced size, or the disk filled up while writing (names
            the file; the partial file is deleted).
        DownloadError: HTTP error status, network failure or deadline (names the URL and the status).
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
    if validate is not None and not callable(validate):
        raise ValueError(f"`validate` must be a callable taking a path. Received: validate={validate!r}")
    checks = _expected_hashes(sha256=sha256, sha256_prefix=sha256_prefix, sha1=sha1, sha1_prefix=sha1_prefix)
    offline = is_offline() if offline is None else bool(offline)
    deadline_s = _deadline_seconds(deadline)

    target = cache_dir() / subdir_path / file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    # fcntl/msvcrt lock: released by the OS if the holder dies, so a crash leaves no stale lock behind.
    with filelock.FileLock(str(target.with_name(target.name + ".lock"))):
        problem = _check_cached(target, checks, validate)
        if problem is None:
            return target
        if problem != "missing":
            logger.warning(
                "Cached file %s failed verification (%s); deleting it and downloading again.", target, problem
            )
            _discard_cached(target)
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
        clock = _Clock(deadline_s)
        options = dict(retries=retries, timeout=timeout, progress=progress, desc=file_name, clock=clock,
                       blind_resume=bool(checks))
        resumed = _download(url, part, **options)
        digests, failure = _check_download(url, part, checks, validate, file_name)
        if failure is not None and resumed:
            # Bytes from two transfers: the remote file may have changed in between. Try once more, whole.
            logger.warning("%s, assembled from a resumed transfer, failed verification (%s); downloading it "
                           "again from the start.", file_name, failure)
            _remove(part, _part_meta(part))
            _download(url, part, fresh=True, **options)
            digests, failure = _check_download(url, part, checks, validate, file_name)
        if failure is not None:
            _remove(part, _part_meta(part))
            raise failure
        os.replace(part, target)
        _remove(_part_meta(part))
        _write_sidecar(target, digests, url=url, validated=_validator_key(validate), downloaded=True)
        return target


def _validator_key(validate):
    key = getattr(validate, "cache_key", None)
    return key if isinstance(key, str) else None


def _html_snippet(path):
    """The start of the file when it looks like an HTML page, else None."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not _HTML_START.match(head):
        return None
    text = " ".join(head[:80].decode("utf-8", "replace").split())
    return text


def _content_problem(path, validate, file_name):
    """None when the file may be used, else what is wrong with its content (HTML page, refused by `validate`)."""
    if not file_name.lower().endswith((".html", ".htm")):
        snippet = _html_snippet(path)
        if snippet is not None:
            return f"it is an HTML page (it starts with {snippet!r}), not the file"
    if validate is not None:
        try:
            validate(path)
        except (ImportError, MemoryError):
            raise
        except Exception as error:  # the reader's or validator's own error says what is wrong
            message = " ".join(str(error).split()) or "no details"
            what = getattr(validate, "description", None) or f"accepted by {validate!r}"
            return f"it is not {what} ({type(error).__name__}: {message})"
    return None


def _check_download(url, part, checks, validate, file_name):
    """Digests of a finished `.part` and None, or None and the exception to raise."""
    digests = hash_file(part)
    mismatch = _mismatch(digests, checks)
    if mismatch is not None:
        return None, ChecksumError(
            f"The file downloaded from {url} has the wrong hash: {mismatch}. It was deleted and not cached. "
            "The upstream file may have changed, or the transfer was corrupted."
        )
    reason = _content_problem(part, validate, file_name)
    if reason is not None:
        meta = _read_json(_part_meta(part)) or {}
        details = [f"{part.stat().st_size} bytes"]
        if meta and meta.get("size") is None:
            details.append("the server sent no Content-Length, so a body cut short looks complete")
        if meta.get("content_type"):
            details.append(f"served as Content-Type {meta['content_type']!r}")
        return None, InvalidDownloadError(
            f"The file downloaded from {url} ({'; '.join(details)}) is not usable: {reason}. It was deleted and not "
            "cached. Check the URL in a browser, or try again later.",
            url=url,
            reason=reason,
        )
    return digests, None


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


def _write_json(path, data, *, url=None):
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        if error.errno in _NO_SPACE:
            raise DiskFullError(
                f"No space left on the device to write {path}"
                + (f" (downloading {url})" if url else "")
                + f": {error.strerror}. Nothing was left behind. Free some space, or set {ENV_HOME} to a folder on "
                "another disk.",
                url=url,
                path=path,
            ) from error
        raise


def _write_sidecar(path, digests, *, url=None, validated=None, downloaded=False):
    """Records the digests of a verified file, keeping the record of its first good download."""
    stat = path.stat()
    old = _read_json(_sidecar(path)) or {}
    first = old.get("first") if isinstance(old.get("first"), dict) else None
    if first is None and isinstance(old.get("sha256"), str):  # sidecar written before first-download records
        first = {"sha256": old["sha256"], "size": old.get("size"), "url": old.get("url"), "utc": old.get("utc")}
    now = _utc_now()
    same_bytes = old.get("sha256") == digests["sha256"]
    record = {
        **digests,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "url": url if downloaded or not same_bytes else old.get("url", url),
        "utc": now if downloaded or not same_bytes else old.get("utc", now),
        "validated": validated,
    }
    if first is None:
        first = {"sha256": digests["sha256"], "size": stat.st_size, "url": record["url"], "utc": record["utc"],
                 "how": "downloaded" if downloaded else "found in the cache"}
    elif first["sha256"] != digests["sha256"] and downloaded:
        logger.warning(
            "%s now has sha256 %s, but the first good download (%s) had %s: the upstream file changed, or one of the "
            "two downloads is not the original.", path.name, digests["sha256"], first.get("utc"), first["sha256"]
        )
    record["first"] = first
    _write_json(_sidecar(path), record, url=url)


def _discard_cached(target):
    """Deletes a cached file that failed verification; its sidecar keeps only the first-download record."""
    record = _read_json(_sidecar(target)) or {}
    _remove(target)
    first = record.get("first")
    if not isinstance(first, dict) and isinstance(record.get("sha256"), str):
        first = {"sha256": record["sha256"], "size": record.get("size"), "url": record.get("url"),
                 "utc": record.get("utc")}
    if isinstance(first, dict):
        _write_json(_sidecar(target), {"first": first})
    else:
        _remove(_sidecar(target))


def _check_cached(target, checks, validate):
    """Returns None when `target` may be served, else a reason ("missing", or what failed)."""
    if not target.is_file():
        return "missing"
    stat = target.stat()
    record = _read_json(_sidecar(target)) or {}
    # Always hashed again: a change of the bytes that kept size and mtime (bit rot, an in-place overwrite that
    # restored the mtime) is caught too. See the module docstring for the cost.
    digests = hash_file(target)
    recorded = record.get("sha256")
    if isinstance(recorded, str) and recorded != digests["sha256"]:
        return f"its sha256 {digests['sha256']} differs from {recorded} recorded at download"
    mismatch = _mismatch(digests, checks)
    if mismatch is not None:
        return mismatch
    key = _validator_key(validate)
    known = isinstance(recorded, str) and (validate is None or (key is not None and record.get("validated") == key))
    if not known:
        # A file copied in by hand, cached before validation existed, or checked by another validator: check it.
        reason = _content_problem(target, validate, target.name)
        if reason is not None:
            return reason
    if not known or record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
        validated = key if validate is not None else record.get("validated")
        _write_sidecar(target, digests, url=record.get("url"), validated=validated)
    return None


def _download(url, part, *, retries, timeout, progress, desc, clock, blind_resume, fresh=False):
    """Downloads `url` into `part`, resuming what is there; retries transient failures.

    Returns True when bytes of an earlier transfer were kept (a resume), False for one whole transfer.
    """
    attempts = retries + 1
    resumed = False
    for attempt in range(attempts):
        try:
            resumed |= _stream(url, part, timeout=timeout, progress=progress, desc=desc, clock=clock,
                               allow_resume=not (fresh and attempt == 0), blind_resume=blind_resume)
            return resumed
        except _Transient as error:
            if attempt + 1 == attempts:
                kept = f" The partial file {part} was kept; calling again resumes it." if part.exists() else ""
                raise DownloadError(
                    f"Downloading {url} failed after {attempts} attempt(s): {error}.{kept}",
                    url=url,
                    status=error.status,
                ) from error
            delay = min(RETRY_BACKOFF_S * 2**attempt, max(clock.remaining(), 0.0))
            logger.warning("Downloading %s failed (%s); retrying in %.1f s.", url, error, delay)
            time.sleep(delay)
        except _DeadlineExceeded as error:
            kept = f" The partial file {part} was kept; calling again resumes it." if part.exists() else ""
            raise DownloadError(
                f"Downloading {url} did not finish within the deadline of {clock.seconds:g} s ({error}). The server "
                f"may be trickling the data.{kept} Raise the limit with deadline=... or {ENV_DEADLINE}.",
                url=url,
            ) from None
    return resumed


class _Transient(Exception):
    """A failure worth retrying (the partial file is kept for resume)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class _DeadlineExceeded(Exception):
    """The overall deadline of the call passed."""


def _request(url, headers, *, timeout, clock):
    """`requests.get(stream=True)` that returns by the deadline even when the server trickles its headers.

    The request runs in a daemon thread; past the deadline the caller gets `_DeadlineExceeded`, and the thread closes
    the response if it ever arrives. Only the headers are read there: the body is read by the caller.
    """
    box, lock = {}, threading.Lock()
    done = threading.Event()
    wait = max(clock.remaining(), 0.0)
    per_read = min(timeout, wait) if timeout else wait

    def run():
        try:
            response = requests.get(url, headers=headers, stream=True, timeout=per_read, allow_redirects=True)
        except BaseException as error:  # handed to the caller
            with lock:
                box["error"] = error
        else:
            with lock:
                if box.get("abandoned"):
                    response.close()
                    return
                box["response"] = response
        finally:
            done.set()

    thread = threading.Thread(target=run, name=f"nonlocal_zoo download {url}", daemon=True)
    thread.start()
    done.wait(wait)
    with lock:
        if "response" not in box and "error" not in box:
            box["abandoned"] = True
            raise _DeadlineExceeded("no response headers yet")
    if "error" in box:
        raise box["error"]
    return box["response"]


def _response_validator(response):
    """A strong `ETag`, else `Last-Modified`: what `If-Range` may carry (RFC 9110 §13.1.5)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _no_space_message(path, url, error, received, total):
    size = f"{received} of {total} bytes" if total else f"{received} bytes"
    return (f"No space left on the device while writing {path} (downloading {url}, {size} written): "
            f"{error.strerror}. The partial file was deleted. Free some space, or set {ENV_HOME} to a folder on "
            "another disk.")


def _stream(url, part, *, timeout, progress, desc, clock, allow_resume=True, blind_resume=False):
    """One transfer into `part`; returns True when it appended to bytes of an earlier transfer.

    Steps: decide whether the partial file may be resumed (`_resume_request`), request (`_get`), check the status,
    reconcile a 206 answer with the partial file (`_reconcile_partial`), check the free space (`_check_space`),
    record the remote file's validator, then append the body (`_write_body`).
    """
    meta, offset, headers = _resume_request(url, part, allow_resume=allow_resume, blind_resume=blind_resume)
    response = _get(url, headers, timeout=timeout, clock=clock)

    def restart(why):
        logger.info("Not resuming %s: %s; downloading it whole.", url, why)
        _remove(part, _part_meta(part))
        return _stream(url, part, timeout=timeout, progress=progress, desc=desc, clock=clock, allow_resume=False)

    with response:
        status = response.status_code
        if status == 416 and offset:
            # Range not satisfiable: the partial is not a prefix of the current remote file. Start over.
            return restart("the server answered 416 (range not satisfiable)")
        _check_status(url, response)
        total = _content_length(response)
        validator = _response_validator(response)
        if status == 206:
            problem, offset, total = _reconcile_partial(response, part, meta, offset, total, validator)
            if problem is not None:
                return restart(problem)
        else:
            if offset:
                logger.info("Server ignored the Range request for %s; downloading the whole file again.", url)
            offset = 0
        _check_space(url, part, None if total is None else total - offset, status)
        if status == 200:
            _write_json(_part_meta(part), {"url": url, "validator": validator, "size": total,
                                           "content_type": response.headers.get("Content-Type")}, url=url)
        received = _write_body(url, part, response, offset=offset, total=total, clock=clock, progress=progress,
                               desc=desc)
        if total is not None and received != total:
            raise _Transient(f"truncated transfer: received {received} of {total} bytes")
        return offset > 0


def _resume_request(url, part, *, allow_resume, blind_resume):
    """`(part_meta, offset, headers)`: the recorded metadata of `part`, the byte offset to resume from (0: whole
    file) and the request headers (`Range` and `If-Range` when resuming)."""
    meta = _read_json(_part_meta(part)) or {}
    # Resume only when a splice of two remote versions would be caught: by If-Range (a validator was recorded) or
    # by a pinned hash. Otherwise the partial file is overwritten.
    resumable = allow_resume and part.exists() and meta.get("url", url) == url
    resumable = resumable and (bool(meta.get("validator")) or blind_resume)
    offset = part.stat().st_size if resumable else 0
    headers = {"Accept-Encoding": "identity", "User-Agent": "nonlocal_zoo"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        # If the remote file changed since the partial was written, If-Range makes the server send it whole.
        if meta.get("validator"):
            headers["If-Range"] = meta["validator"]
    return meta, offset, headers


def _get(url, headers, *, timeout, clock):
    """The streamed response of `url`; connection failures are `_Transient` (or `_DeadlineExceeded` once the
    deadline passed), other request errors a `DownloadError`."""
    if clock.expired():
        raise _DeadlineExceeded("no time left before the request")
    try:
        return _request(url, headers, timeout=timeout, clock=clock)
    except (requests.ConnectionError, requests.Timeout) as error:
        if clock.expired():
            raise _DeadlineExceeded(f"connection: {error}") from None
        raise _Transient(f"connection error: {error}") from error
    except requests.RequestException as error:
        raise DownloadError(f"Could not request {url}: {error}", url=url) from error


def _check_status(url, response):
    """Retryable statuses raise `_Transient`; other errors and anything but 200/206 a `DownloadError`."""
    status = response.status_code
    if status in _RETRY_STATUS:
        raise _Transient(f"HTTP {status} {response.reason}", status=status)
    if status >= 400:
        raise DownloadError(f"HTTP {status} {response.reason} while downloading {url}", url=url, status=status)
    if status not in (200, 206):
        raise DownloadError(
            f"Unexpected HTTP {status} {response.reason} while downloading {url}", url=url, status=status
        )


def _reconcile_partial(response, part, meta, offset, total, validator):
    """Checks a 206 answer against the partial file. Returns `(problem, offset, total)`: `problem` is why the
    partial cannot be resumed (None when it can); `offset` may move back when the server sent more than asked for,
    and `total` becomes the full size of the remote file.

    Args:
        response: the 206 response. part: the partial file. meta: its recorded metadata. offset: its size.
        total: the response's Content-Length (or None). validator: the response's ETag / Last-Modified.
    """
    start, full = _content_range(response.headers.get("Content-Range"))
    if not offset or start is None or start > offset:
        return f"unusable partial answer (Content-Range {response.headers.get('Content-Range')!r})", offset, total
    if meta.get("validator") and validator and validator != meta["validator"]:
        return f"the file changed (validator {validator} instead of {meta['validator']})", offset, total
    if meta.get("size") is not None and full is not None and full != meta["size"]:
        return f"the file changed (now {full} bytes, was {meta['size']})", offset, total
    if start < offset:
        # A server may send a larger range than asked for; keep our prefix up to where it starts.
        with open(part, "r+b") as f:
            f.truncate(start)
        offset = start
    total = full if full is not None else (None if total is None else start + total)
    return None, offset, total


def _check_space(url, part, needed, status):
    """Raises `DiskFullError` before writing when the disk of `part` lacks `needed` bytes (None: unknown size)."""
    if needed is None:
        return
    usage = shutil.disk_usage(part.parent)
    reusable = part.stat().st_size if (part.exists() and status == 200) else 0
    if usage.free + reusable < needed + _SPACE_MARGIN:
        raise DiskFullError(
            f"Not enough free space to download {url}: it needs {needed} bytes (Content-Length) and "
            f"{part.parent} has {usage.free} bytes free. Nothing was written to {part}. Free some space, or "
            f"set {ENV_HOME} to a folder on another disk.",
            url=url,
            path=part,
        )


def _write_body(url, part, response, *, offset, total, clock, progress, desc):
    """Appends the response body to `part` (written anew when `offset` is 0), fsynced; returns the bytes `part`
    then holds. A full disk deletes the partial file and raises `DiskFullError`; an interrupted read is
    `_Transient` (the partial file is kept for resume)."""
    # We compare the byte count with Content-Length ourselves. urllib3's own check raises inside a read and
    # drops the bytes of that read, which would lose up to a chunk from the partial file we want to resume.
    raw = response.raw
    if hasattr(raw, "enforce_content_length"):
        raw.enforce_content_length = False
    received = offset
    try:
        f = open(part, "ab" if offset else "wb")
    except OSError as error:
        if error.errno in _NO_SPACE:
            _remove(part, _part_meta(part))
            raise DiskFullError(_no_space_message(part, url, error, received, total), url=url, path=part) from None
        raise
    try:
        with f, tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                     disable=not progress) as bar:
            while True:
                if clock.expired():
                    raise _DeadlineExceeded(f"received {received} of {total or 'an unknown number of'} bytes")
                try:
                    # read1: returns what one socket read brought, so a trickle cannot hold us past the deadline.
                    chunk = raw.read1(_STREAM_CHUNK_BYTES, decode_content=True)
                except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as error:
                    if clock.expired():
                        raise _DeadlineExceeded(f"received {received} bytes; {error}") from None
                    raise _Transient(f"transfer interrupted after {received} bytes ({error})") from error
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        if error.errno not in _NO_SPACE:
            raise
        _remove(part, _part_meta(part))
        raise DiskFullError(_no_space_message(part, url, error, received, total), url=url, path=part) from None
    return received


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
