"""Tests of nonlocal_zoo.pretrained.hub against a local Hugging Face cache (no network)."""
import hashlib
import re
import shutil

import numpy as np
import pytest

from nonlocal_zoo.pretrained.download import OfflineError
from nonlocal_zoo.pretrained.hub import parse_hf_uri, push_to_hub, resolve_hf, upload_folder_to_hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _snapshot(hf_home, repo_id, files, *, commit=COMMIT, refs=("main",)):
    """Writes the standard cache layout: hub/models--org--repo/{refs/<name>, snapshots/<commit>/<files>}."""
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    for name, content in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(content)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("NONLOCAL_ZOO_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return home


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("hf://org/repo", ("org/repo", None, None)),
        ("hf://org/repo@v1.0", ("org/repo", "v1.0", None)),
        ("hf://org/repo/model.weights.h5", ("org/repo", None, "model.weights.h5")),
        (f"hf://org/repo@{COMMIT}/sub/config.json", ("org/repo", COMMIT, "sub/config.json")),
    ],
)
def test_parse_hf_uri(uri, expected):
    assert parse_hf_uri(uri) == expected


@pytest.mark.parametrize(
    "uri", ["org/repo", "hf://org", "hf://org/", "hf://org/repo@", "hf://org/repo/../x", "hf://o g/repo", None]
)
def test_parse_hf_uri_rejects(uri):
    with pytest.raises(ValueError, match=re.escape(f"uri={uri!r}")):
        parse_hf_uri(uri)


def test_resolve_from_local_cache_offline(hf_home):
    weights, config = b"\x89HDF fake weights", b'{"class_name": "Functional"}'
    files = {"model.weights.h5": weights, "config.json": config, "README.md": b"# card"}
    snapshot = _snapshot(hf_home, "org/repo", files, refs=("main", "v1"))
    assert resolve_hf("hf://org/repo") == snapshot
    assert resolve_hf("hf://org/repo@v1") == snapshot
    assert resolve_hf(f"hf://org/repo@{COMMIT}") == snapshot
    path = resolve_hf("hf://org/repo/model.weights.h5")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(weights).hexdigest()
    assert resolve_hf("hf://org/repo@v1/config.json").read_bytes() == config


def test_offline_miss_is_clear(hf_home):
    _snapshot(hf_home, "org/repo", {"config.json": b"{}"})
    with pytest.raises(OfflineError, match=re.escape("hf://org/missing")) as info:
        resolve_hf("hf://org/missing")
    assert str(hf_home / "hub") in str(info.value)
    with pytest.raises(OfflineError, match=re.escape("'model.weights.h5' of hf://org/repo")):
        resolve_hf("hf://org/repo/model.weights.h5")
    with pytest.raises(OfflineError):
        resolve_hf("hf://org/repo@v2")  # unknown ref


def test_nonlocal_zoo_offline_variable_is_enough(hf_home, monkeypatch):
    snapshot = _snapshot(hf_home, "org/repo", {"model.keras": b"zip"})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("NONLOCAL_ZOO_OFFLINE", "1")
    assert resolve_hf("hf://org/repo") == snapshot
    with pytest.raises(OfflineError):
        resolve_hf("hf://org/other")


def test_repository_without_model_files(hf_home):
    _snapshot(hf_home, "org/empty", {"notes.txt": b"hello"})
    with pytest.raises(ValueError, match="no Keras model file"):
        resolve_hf("hf://org/empty")


def test_conflicting_revisions(hf_home):
    with pytest.raises(ValueError, match="revision='v2'"):
        resolve_hf("hf://org/repo@v1", revision="v2")


class _FakeApi:
    """Stands in for huggingface_hub.HfApi: records calls; `upload_folder` copies into a local HF cache."""

    calls = []
    hf_home = None

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        if self.hf_home is not None:
            repo_dir = self.hf_home / "hub" / ("models--" + kwargs["repo_id"].replace("/", "--"))
            shutil.copytree(kwargs["folder_path"], repo_dir / "snapshots" / COMMIT)
            (repo_dir / "refs").mkdir(parents=True)
            (repo_dir / "refs" / "main").write_text(COMMIT)
        return "commit-info"


@pytest.fixture
def fake_api(monkeypatch):
    import huggingface_hub

    _FakeApi.calls = []
    _FakeApi.hf_home = None
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    return _FakeApi


def test_upload_folder_to_hub(tmp_path, fake_api):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.weights.h5").write_bytes(b"w")
    out = upload_folder_to_hub(folder, "hf://me/i3d", token="tok", private=True, card="# I3D\n", commit_message="msg")
    assert out == "commit-info"
    assert (folder / "README.md").read_text() == "# I3D\n"
    assert fake_api.calls[0] == ("init", "tok")
    create = {"repo_id": "me/i3d", "repo_type": "model", "private": True, "exist_ok": True}
    assert fake_api.calls[1] == ("create_repo", create)
    upload = fake_api.calls[2][1]
    assert upload["repo_id"] == "me/i3d" and upload["folder_path"] == str(folder) and upload["commit_message"] == "msg"


@pytest.mark.parametrize("repo_id", ["noslash", "a/b/c", "hf://a/b@rev", "", None])
def test_upload_rejects_bad_repo_id(tmp_path, fake_api, repo_id):
    with pytest.raises(ValueError, match="repo_id"):
        upload_folder_to_hub(tmp_path, repo_id)
    assert fake_api.calls == []


def test_upload_rejects_missing_or_empty_folder(tmp_path, fake_api):
    with pytest.raises(ValueError, match=re.escape(repr(str(tmp_path / "nope")))):
        upload_folder_to_hub(tmp_path / "nope", "me/x")
    with pytest.raises(ValueError, match="empty"):
        upload_folder_to_hub(tmp_path, "me/x")


def test_push_to_hub_round_trip(tmp_path, hf_home, fake_api):
    keras = pytest.importorskip("keras")
    fake_api.hf_home = hf_home
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="pred")(inputs))
    x = np.random.default_rng(0).standard_normal((2, 4)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    push_to_hub(model, "me/tiny", card="# tiny")
    folder = resolve_hf("hf://me/tiny")
    assert {"config.json", "metadata.json", "model.weights.h5", "README.md"} <= {p.name for p in folder.iterdir()}
    restored = keras.saving.load_model(folder)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x)), expected, rtol=1e-6, atol=1e-6)
