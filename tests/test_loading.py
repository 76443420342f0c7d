"""`weights=` end to end: "kinetics400" through a real HTTP server on 127.0.0.1, the converted cache, local
Keras files, `convert_checkpoint`, `download_preset` and `push_to_hub` / `weights="hf://..."` on a local Hub cache.

The preset `i3d_nl5_r50_8x8_kinetics400` is patched to a reduced architecture whose upstream "checkpoint" is a
Caffe2 pickle generated here; its logits are checked against the official network transcribed in PyTorch.
"""
import hashlib
import io
import json
import pickle
import shutil
import sys

import keras
import numpy as np
import pytest

from tests.test_download import server  # noqa: F401  (the local HTTP server fixture)
from tests.torch_references import (
    assert_logits_match,
    i3d_temporal_kernels,
    keras_logits,
    official_blobs,
    official_config,
    official_forward,
    random_clips,
    tiny_overrides,
)

from nonlocal_zoo.models import create_model
from nonlocal_zoo.models import weights as weights_module
from nonlocal_zoo.models.conversion import convert_checkpoint, push_to_hub
from nonlocal_zoo.models.weights import load_weights
from nonlocal_zoo.presets import PRESETS
from nonlocal_zoo.pretrained.convert import CANONICAL_FORMAT, CONVERTER_VERSION
from nonlocal_zoo.pretrained.download import ChecksumError, DownloadError, OfflineError
from nonlocal_zoo.pretrained.loading import download_preset, read_provenance

PRESET = "i3d_nl5_r50_8x8_kinetics400"
DEPTHS = [1, 1, 1, 1]
NL = [[], [0], [0], []]
SHAPE = (8, 32, 32, 3)
URL_PATH = "/video-nonlocal/i3d_nonlocal_8x8_IN_pretrain_400k.pkl"


@pytest.fixture(autouse=True)
def home(zoo_home):
    return zoo_home


class Upstream:
    """The generated upstream checkpoint of the patched preset, and its reference logits."""

    def __init__(self, server):
        self.cfg = official_config(stem_width=4, depths=DEPTHS, widths=[4, 8, 16, 32], conv1_kt=5, conv1_ts=1,
                                   pool1_kernel=(1, 3, 3), pool1_stride=(1, 2, 2),
                                   temporal_kernels=i3d_temporal_kernels(DEPTHS), nonlocal_blocks=NL)
        self.x = random_clips((2, 3, *SHAPE[:3]), seed=33)
        self.blobs = official_blobs(self.cfg, seed=31, calibration=self.x)
        buffer = io.BytesIO()
        pickle.dump({"blobs": dict(self.blobs)}, buffer, protocol=2)
        self.data = buffer.getvalue()
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.expected = official_forward(self.blobs, self.x, self.cfg).numpy()
        server.files[URL_PATH] = self.data
        self.server = server

    def requests(self):
        return len(self.server.requests)


@pytest.fixture
def upstream(server, monkeypatch):  # noqa: F811
    up = Upstream(server)
    arch = dict(PRESETS[PRESET]["arch"])
    arch.update(tiny_overrides(depths=DEPTHS, stem_width=4, temporal_kernels=i3d_temporal_kernels(DEPTHS),
                               nonlocal_blocks=NL))
    weights = dict(PRESETS[PRESET]["weights"], url=server.url(URL_PATH), sha256=up.sha256)
    monkeypatch.setitem(PRESETS[PRESET], "arch", arch)
    monkeypatch.setitem(PRESETS[PRESET], "weights", weights)
    return up


@pytest.fixture
def conversions(monkeypatch):
    """Counts the conversions of upstream checkpoints that `load_weights` runs (reads of the canonical cache are
    not conversions)."""
    calls = []
    original = weights_module.assign_checkpoint

    def counting(*args, **kwargs):
        if kwargs.get("format") != CANONICAL_FORMAT:
            calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(weights_module, "assign_checkpoint", counting)
    return calls


def _kinetics_model(**kwargs):
    return create_model(PRESET, weights="kinetics400", input_shape=SHAPE, classifier_activation=None, **kwargs)


def _res5(model):
    return keras.Model(model.input, model.get_layer("res5").output)


def test_kinetics400_download_verify_convert_cache(upstream, conversions, home):
    model = _kinetics_model()
    assert_logits_match(keras_logits(model, upstream.x), upstream.expected)
    assert upstream.requests() == 1 and len(conversions) == 1

    converted = home / "converted" / f"{PRESET}.h5"
    record = json.loads((home / "converted" / f"{PRESET}.provenance.json").read_text())
    assert record["preset"] == PRESET and record["converter_version"] == CONVERTER_VERSION
    assert record["source"]["url"] == upstream.server.url(URL_PATH)
    assert record["source"]["sha256"] == upstream.sha256 and record["source"]["format"] == "caffe2_pkl"
    assert record["source"]["licence"] == "CC-BY-NC-4.0"
    assert record["weights_sha256"] == hashlib.sha256(converted.read_bytes()).hexdigest()
    assert not [p.name for p in converted.parent.iterdir() if ".tmp" in p.name]

    # Second use: the converted file is verified and loaded; no download, no conversion.
    again = _kinetics_model()
    np.testing.assert_array_equal(keras_logits(again, upstream.x), keras_logits(model, upstream.x))
    assert upstream.requests() == 1 and len(conversions) == 1

    # Offline, without the upstream file: the converted cache is enough.
    (home / "downloads" / "i3d_nonlocal_8x8_IN_pretrain_400k.pkl").unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NONLOCAL_ZOO_OFFLINE", "1")
        offline = _kinetics_model()
    np.testing.assert_array_equal(keras_logits(offline, upstream.x), keras_logits(model, upstream.x))
    assert upstream.requests() == 1 and len(conversions) == 1


@pytest.fixture
def builds(monkeypatch):
    """Records every backbone that is built (`apply_backbone`, directly or through `build_backbone`)."""
    from nonlocal_zoo.models import backbone, factories
    from nonlocal_zoo.tasks import backbone as task_backbone  # binds apply_backbone at its first import

    calls = []
    for module, name in ((factories, "apply_backbone"), (backbone, "apply_backbone"), (backbone, "build_backbone"),
                         (task_backbone, "apply_backbone")):
        original = getattr(module, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    return calls


def test_first_kinetics400_load_builds_one_model(upstream, conversions, builds, home):
    # The first load converts straight into the model being built: one backbone, no second model, and the same
    # logits as the official network (the converter tests' reference).
    legacy = home / "converted" / f"{PRESET}.weights.h5"  # what converter version 1 cached
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"old")
    model = _kinetics_model()
    assert not legacy.exists()
    assert builds == ["apply_backbone"]
    assert len(conversions) == 1 and upstream.requests() == 1
    assert_logits_match(keras_logits(model, upstream.x), upstream.expected)
    # The cache was written from those tensors (canonical names, independent of the Keras layout) ...
    converted = home / "converted" / f"{PRESET}.h5"
    assert read_provenance(converted)["weights_sha256"] == hashlib.sha256(converted.read_bytes()).hexdigest()
    # ... and the second load reads it: again one backbone, no conversion, identical logits.
    builds.clear()
    again = _kinetics_model()
    assert builds == ["apply_backbone"] and len(conversions) == 1 and upstream.requests() == 1
    np.testing.assert_array_equal(keras_logits(again, upstream.x), keras_logits(model, upstream.x))


def test_headless_first_load_caches_the_head_too(upstream, conversions, builds, home):
    headless = create_model(PRESET, weights="kinetics400", include_top=False, input_shape=SHAPE)
    assert builds == ["apply_backbone"] and len(conversions) == 1
    # The full model later comes from the cache (the head included), without converting again.
    full = _kinetics_model()
    assert len(conversions) == 1 and upstream.requests() == 1
    assert_logits_match(keras_logits(full, upstream.x), upstream.expected)
    np.testing.assert_array_equal(keras_logits(headless, upstream.x), keras_logits(_res5(full), upstream.x))
    # The cache file itself loads as weights of the preset (it is a canonical .h5, not a Keras layout).
    from_file = create_model(PRESET, weights=home / "converted" / f"{PRESET}.h5", input_shape=SHAPE,
                             classifier_activation=None)
    np.testing.assert_array_equal(keras_logits(from_file, upstream.x), keras_logits(full, upstream.x))


def test_preset_comes_from_the_argument_or_attribute_never_the_name(upstream):
    model = create_model(PRESET, input_shape=SHAPE, classifier_activation=None)
    assert model.name == PRESET
    model.preset = None  # as a plain Keras model loaded from a file: create_model's in-memory record is not saved
    with pytest.raises(ValueError, match="needs the preset.*preset=None"):
        load_weights(model, "kinetics400")
    model.preset = PRESET  # what a VideoClassifier carries
    load_weights(model, "kinetics400")
    assert_logits_match(keras_logits(model, upstream.x), upstream.expected)
    with pytest.raises(ValueError, match="format='caffe2_pkl'"):
        load_weights(model, "kinetics400", format="caffe2_pkl")


def test_corrupted_converted_cache_is_converted_again(upstream, conversions, home):
    reference = keras_logits(_kinetics_model(), upstream.x)
    converted = home / "converted" / f"{PRESET}.h5"
    data = bytearray(converted.read_bytes())
    data[-100] ^= 0xFF
    converted.write_bytes(bytes(data))
    model = _kinetics_model()
    assert len(conversions) == 2 and upstream.requests() == 1  # the verified download is reused
    np.testing.assert_array_equal(keras_logits(model, upstream.x), reference)
    record = read_provenance(converted)
    assert record["weights_sha256"] == hashlib.sha256(converted.read_bytes()).hexdigest()


def test_stale_converter_version_is_converted_again(upstream, conversions, home):
    _kinetics_model()
    path = home / "converted" / f"{PRESET}.provenance.json"
    record = json.loads(path.read_text())
    record["converter_version"] = "0"
    path.write_text(json.dumps(record))
    _kinetics_model()
    assert len(conversions) == 2


def test_headless_and_other_classes_get_the_body_only(upstream):
    full = _kinetics_model()
    features = keras_logits(_res5(full), upstream.x)
    headless = create_model(PRESET, weights="kinetics400", include_top=False, input_shape=SHAPE)
    np.testing.assert_array_equal(keras_logits(headless, upstream.x), features)
    # The official fully-convolutional test head uses the same `pred` weights (logits: the same numbers).
    fully_conv = create_model(PRESET, weights="kinetics400", fully_convolutional=True, input_shape=SHAPE,
                              classifier_activation=None)
    np.testing.assert_allclose(keras_logits(fully_conv, upstream.x), keras_logits(full, upstream.x),
                               rtol=1e-5, atol=1e-5)
    ten = create_model(PRESET, classes=10, input_shape=SHAPE)
    fresh = np.array(ten.get_layer("pred").kernel.numpy())
    load_weights(ten, "kinetics400", preset=PRESET, classes=10)
    np.testing.assert_array_equal(ten.get_layer("pred").kernel.numpy(), fresh)
    np.testing.assert_array_equal(keras_logits(_res5(ten), upstream.x), features)


def test_wrong_hash_is_rejected_and_nothing_is_cached(upstream, monkeypatch, home):
    monkeypatch.setitem(PRESETS[PRESET]["weights"], "sha256", hashlib.sha256(b"other").hexdigest())
    with pytest.raises(ChecksumError, match=upstream.sha256):
        _kinetics_model()
    assert not (home / "downloads" / "i3d_nonlocal_8x8_IN_pretrain_400k.pkl").exists()
    assert not list((home / "converted").glob("*.h5"))


def test_truncated_download_and_offline_miss(upstream, home):
    upstream.server.modes[URL_PATH] = "drop"
    with pytest.raises(DownloadError, match="truncated|interrupted"):
        _kinetics_model()
    assert not list((home / "converted").glob("*.h5"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NONLOCAL_ZOO_OFFLINE", "1")
        with pytest.raises(OfflineError, match="i3d_nonlocal_8x8_IN_pretrain_400k.pkl"):
            _kinetics_model()


def test_download_preset(upstream, home):
    path = download_preset(PRESET, progress=False)
    assert path == home / "downloads" / "i3d_nonlocal_8x8_IN_pretrain_400k.pkl"
    assert path.read_bytes() == upstream.data
    with pytest.raises(ValueError, match="no published weights.*name='i3d_r50'"):
        download_preset("i3d_r50")


def test_convert_checkpoint_files_and_script(upstream, tmp_path):
    src = tmp_path / "upstream.pkl"
    src.write_bytes(upstream.data)
    out = convert_checkpoint(src, model=PRESET, out=tmp_path / "out" / "i3d.weights.h5", source_url="file://x")
    record = read_provenance(out)
    assert record["source"] == {**record["source"], "sha256": upstream.sha256, "url": "file://x",
                                "format": "caffe2_pkl", "file_name": "upstream.pkl"}
    assert (tmp_path / "out" / "i3d.provenance.json").is_file()
    model = create_model(PRESET, weights=out, input_shape=SHAPE, classifier_activation=None)
    assert_logits_match(keras_logits(model, upstream.x), upstream.expected)

    whole = convert_checkpoint(src, model=PRESET, out=tmp_path / "i3d.keras")
    from_keras = create_model(PRESET, weights=whole, input_shape=SHAPE, classifier_activation=None)
    np.testing.assert_array_equal(keras_logits(from_keras, upstream.x), keras_logits(model, upstream.x))

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import convert_checkpoint as script
    finally:
        sys.path.pop(0)
    assert script.main([str(src), "--model", PRESET, "--out", str(tmp_path / "s.weights.h5")]) == 0
    assert read_provenance(tmp_path / "s.weights.h5")["source"]["sha256"] == upstream.sha256
    with pytest.raises(ValueError, match="out='x.h5'"):
        convert_checkpoint(src, model=PRESET, out="x.h5")


# ----------------------------------------------------------------------------------------------------------------
# Hub
# ----------------------------------------------------------------------------------------------------------------
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _LocalHub:
    """Stands in for `huggingface_hub.HfApi`: `upload_folder` writes a snapshot into the local HF cache."""

    hf_home = None
    uploads = []

    def __init__(self, token=None):
        pass

    def create_repo(self, **kwargs):
        pass

    def upload_folder(self, **kwargs):
        repo_dir = self.hf_home / "hub" / ("models--" + kwargs["repo_id"].replace("/", "--"))
        shutil.copytree(kwargs["folder_path"], repo_dir / "snapshots" / COMMIT)
        (repo_dir / "refs").mkdir(parents=True)
        (repo_dir / "refs" / "main").write_text(COMMIT)
        self.uploads.append(kwargs)
        return "commit-info"


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    import huggingface_hub

    hf_home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(_LocalHub, "hf_home", hf_home)
    monkeypatch.setattr(_LocalHub, "uploads", [])
    monkeypatch.setattr(huggingface_hub, "HfApi", _LocalHub)
    return hf_home


def test_push_preset_to_hub_and_load_it_back(upstream, local_hub, monkeypatch):
    reference = keras_logits(_kinetics_model(), upstream.x)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # from here on: the local caches only
    assert push_to_hub(PRESET, "me/i3d-nl-tiny") == "commit-info"
    snapshot = local_hub / "hub" / "models--me--i3d-nl-tiny" / "snapshots" / COMMIT
    card = (snapshot / "README.md").read_text()
    assert "CC-BY-NC-4.0" in card and "74.7" in card  # licence and published top-1 of the preset

    from_hub = create_model(PRESET, weights="hf://me/i3d-nl-tiny", input_shape=SHAPE, classifier_activation=None)
    np.testing.assert_array_equal(keras_logits(from_hub, upstream.x), reference)
    pinned = create_model(PRESET, weights=f"hf://me/i3d-nl-tiny@{COMMIT}/model.weights.h5", input_shape=SHAPE,
                          classifier_activation=None)
    np.testing.assert_array_equal(keras_logits(pinned, upstream.x), reference)
    headless = create_model(PRESET, weights="hf://me/i3d-nl-tiny", include_top=False, input_shape=SHAPE)
    np.testing.assert_array_equal(keras_logits(headless, upstream.x), keras_logits(_res5(from_hub), upstream.x))


def test_push_model_card_from_model_cards(upstream, local_hub, monkeypatch):
    # The card of a plain Keras model comes from the one card generator (nonlocal_zoo.model_cards), with the parity
    # measurement given to push_to_hub, and its usage snippet loads the repository back.
    from nonlocal_zoo import model_cards
    from nonlocal_zoo.tasks import VideoClassifier

    model = _kinetics_model()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    parity = {"max_rel_diff": 2.5e-6, "top1_agreement": 1.0}
    push_to_hub(model, "hf://me/tiny2", preset=PRESET, parity=parity)
    card = (local_hub / "hub" / "models--me--tiny2" / "snapshots" / COMMIT / "README.md").read_text()
    assert card == model_cards.model_card(PRESET, parity=parity, repo_id="me/tiny2", plain_keras=True)
    for text in ("license: cc-by-nc-4.0", "i3d_nonlocal_8x8_IN_pretrain_400k.pkl", "top-1 74.7", "114.75",
                 "10 clips x 3 crops", 'weights="hf://me/tiny2"', "max_rel_diff 2.5e-06"):
        assert text in card
    from_hub = create_model(PRESET, weights="hf://me/tiny2", input_shape=SHAPE, classifier_activation=None)
    np.testing.assert_array_equal(keras_logits(from_hub, upstream.x), keras_logits(model, upstream.x))
    # the card's snippet: VideoClassifier.from_preset(PRESET, weights="hf://me/tiny2") gets the uploaded weights
    clf = VideoClassifier.from_preset(PRESET, weights="hf://me/tiny2")
    for layer in model.layers:
        for mine, theirs in zip(layer.get_weights(), clf.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(theirs, mine)
    with pytest.raises(ValueError, match="parity"):  # never dropped silently
        push_to_hub(model, "hf://me/tiny3", preset=PRESET, card="# mine", parity=parity)


def test_push_model_of_another_head_gets_a_short_card(local_hub, monkeypatch):
    model = create_model(PRESET, weights=None, input_shape=SHAPE, classes=7, model_name="my_head")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    push_to_hub(model, "me/other", preset=PRESET)
    card = (local_hub / "hub" / "models--me--other" / "snapshots" / COMMIT / "README.md").read_text()
    assert "# my_head" in card and "license: cc-by-nc-4.0" in card  # the preset's licence, inherited
    assert "Kinetics-400" not in card and "from_preset" not in card  # not the preset's 400-class card


def test_hub_repository_with_one_keras_file(upstream, local_hub, tmp_path, monkeypatch):
    src = tmp_path / "upstream.pkl"
    src.write_bytes(upstream.data)
    whole = convert_checkpoint(src, model=PRESET, out=tmp_path / "model.keras")
    repo_dir = local_hub / "hub" / "models--me--kfile"
    (repo_dir / "snapshots" / COMMIT).mkdir(parents=True)
    shutil.copy(whole, repo_dir / "snapshots" / COMMIT / "i3d.keras")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = create_model(PRESET, weights="hf://me/kfile", input_shape=SHAPE, classifier_activation=None)
    assert_logits_match(keras_logits(model, upstream.x), upstream.expected)


def test_video_classifier_first_load_builds_one_backbone(upstream, conversions, builds, home):
    # The LEAD's task object loads through the same road (`models.weights.load_weights`, its `preset`).
    import nonlocal_zoo.tasks as tasks
    clf = tasks.VideoClassifier.from_preset(PRESET, weights="kinetics400", clip_shape=SHAPE)
    assert builds.count("apply_backbone") == 1  # one network (build_backbone, if used, applies it once)
    assert len(conversions) == 1 and upstream.requests() == 1
    reference = _kinetics_model()
    assert len(conversions) == 1
    for layer in ("conv1", "nonlocal_conv3_0", "pred"):
        for a, b in zip(clf.get_layer(layer).weights, reference.get_layer(layer).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
