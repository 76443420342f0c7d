"""Hugging Face Hub plumbing: resolve `hf://` URIs to local files, upload model folders.

Downloads go through `huggingface_hub.hf_hub_download` / `snapshot_download`. These lock, resume and move
files atomically into the standard cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`). `HF_HUB_OFFLINE=1` or
`NONLOCAL_ZOO_OFFLINE=1` restricts them to the cache. Both variables and the cache location are read when the
call is made, so a change to them during the process takes effect.
"""
import os
import re
import tempfile
from pathlib import Path

from nonlocal_zoo.pretrained.download import OfflineError, is_offline

HF_SCHEME = "hf://"
# Files a Keras model repository needs: full models, weights, configs (Keras's unzipped layout is config.json +
# metadata.json + model.weights.h5) and the model card.
MODEL_FILE_PATTERNS = ("*.keras", "*.weights.h5", "*.json", "README.md")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_hf_uri(uri):
    """Splits `hf://org/repo[@revision][/path/in/repo]` into `(repo_id, revision, filename)`.

    `revision` and `filename` are None when absent. A revision that contains "/" (e.g. `refs/pr/1`) cannot be
    written in the URI: pass it as `resolve_hf(..., revision=...)`.

    Example:
        >>> parse_hf_uri("hf://org/repo@v1.0/model.weights.h5")
        ('org/repo', 'v1.0', 'model.weights.h5')
    """
    if not isinstance(uri, str) or not uri.startswith(HF_SCHEME):
        raise ValueError(f"Expected a URI like 'hf://org/repo[@revision][/file]'. Received: uri={uri!r}")
    parts = uri[len(HF_SCHEME):].split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"Expected a URI like 'hf://org/repo[@revision][/file]'. Received: uri={uri!r}")
    org, repo = parts[0], parts[1]
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not revision:
            raise ValueError(f"Empty revision after '@'. Received: uri={uri!r}")
    if not _REPO_PART.match(org) or not _REPO_PART.match(repo):
        raise ValueError(f"Invalid repository id '{org}/{repo}' in the URI. Received: uri={uri!r}")
    rest = parts[2:]
    if any(p in ("", ".", "..") for p in rest):
        raise ValueError(f"Invalid file path inside the repository. Received: uri={uri!r}")
    filename = "/".join(rest) if rest else None
    return f"{org}/{repo}", revision, filename


def _hub_cache_dir():
    """The HF cache dir from the environment as it is now (huggingface_hub reads it once at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def resolve_hf(
    uri, *, revision=None, allow_patterns=MODEL_FILE_PATTERNS, token=None, cache_dir=None, local_files_only=None
):
    """Downloads (or finds in the cache) what an `hf://` URI names and returns its local path.

    `hf://org/repo` and `hf://org/repo@revision` return the local snapshot folder. It holds the files that match
    `allow_patterns`: `.keras`, `.weights.h5`, `*.json` and `README.md` by default. A Keras unzipped model
    folder loads with `keras.saving.load_model(path)`. `hf://org/repo/file.weights.h5` (optionally with
    `@revision`) returns the path of that one file.

    Args:
        uri: `hf://org/repo[@revision][/path/in/repo]`.
        revision: branch, tag or commit hash. Use this for revisions that contain "/". It must not conflict
            with an `@revision` in the URI.
        allow_patterns: glob patterns of the files to fetch for a whole-repository URI.
        token: Hub token for private repositories (None: the logged-in token, if any).
        cache_dir: HF cache folder (None: `$HF_HUB_CACHE`, `$HF_HOME/hub`, or huggingface_hub's default).
        local_files_only: True to use only the cache. None (default): true when `HF_HUB_OFFLINE` or
            `NONLOCAL_ZOO_OFFLINE` is set.

    Returns:
        `pathlib.Path` of the snapshot folder or of the file.

    Raises:
        ValueError: malformed URI or conflicting revisions; a whole-repository URI without any Keras model
            file.
        OfflineError: offline and not in the cache (names the URI and the cache folder).

    Example:
        >>> import keras
        >>> from nonlocal_zoo.pretrained.hub import resolve_hf
        >>> model = keras.saving.load_model(resolve_hf("hf://org/i3d_nl5_r50_32x2_kinetics400"))
    """
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, uri_revision, filename = parse_hf_uri(uri)
    if revision is not None and uri_revision is not None and revision != uri_revision:
        raise ValueError(
            f"The URI names revision {uri_revision!r} but revision={revision!r} was passed. Received: uri={uri!r}"
        )
    revision = revision or uri_revision
    cache_dir = cache_dir or _hub_cache_dir()
    if local_files_only is None:
        local_files_only = is_offline()
    common = dict(
        repo_id=repo_id, revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only,
        library_name="nonlocal_zoo",
    )
    try:
        if filename is not None:
            return Path(huggingface_hub.hf_hub_download(filename=filename, **common))
        patterns = list(allow_patterns) if allow_patterns else None
        folder = Path(huggingface_hub.snapshot_download(allow_patterns=patterns, **common))
    except LocalEntryNotFoundError as error:
        where = cache_dir or "the default Hugging Face cache (~/.cache/huggingface/hub)"
        what = f"'{filename}' of " if filename else ""
        raise OfflineError(
            f"{what}{uri} is not in the Hugging Face cache at {where}, and downloading is off "
            f"(offline mode or local_files_only=True) or the Hub is unreachable. Details: {error}"
        ) from error
    model_files = [p for pattern in ("*.keras", "*.weights.h5", "config.json") for p in folder.glob(pattern)]
    if not model_files:
        raise ValueError(
            f"{uri} resolved to {folder}, which holds no Keras model file (*.keras, *.weights.h5, config.json). "
            f"Found: {sorted(p.name for p in folder.iterdir())[:20]}"
        )
    return folder


def normalize_repo_id(repo_id):
    """`'org/repo'` or `'hf://org/repo'` -> `'org/repo'`; ValueError for anything else (a revision, a file, ...).

    Example:
        >>> normalize_repo_id("hf://me/i3d")
        'me/i3d'
    """
    if isinstance(repo_id, str) and repo_id.startswith(HF_SCHEME):
        parsed, revision, filename = parse_hf_uri(repo_id)
        if revision or filename:
            raise ValueError(f"Pass only 'org/repo' (or 'hf://org/repo') as repo_id. Received: repo_id={repo_id!r}")
        return parsed
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(map(_REPO_PART.match, repo_id.split("/"))):
        raise ValueError(f"`repo_id` must look like 'org/repo'. Received: repo_id={repo_id!r}")
    return repo_id


def upload_folder_to_hub(
    folder,
    repo_id,
    *,
    token=None,
    private=False,
    commit_message="Upload model with nonlocal_zoo",
    card=None,
    revision=None,
    create_pr=False,
):
    """Creates (if needed) a model repository and uploads a folder to it.

    Args:
        folder: local folder to upload (e.g. a Keras unzipped model: config.json, metadata.json,
            model.weights.h5).
        repo_id: 'org/repo' or 'hf://org/repo'.
        token: Hub token (None: the logged-in token).
        private: create the repository as private (an existing repository keeps its visibility).
        commit_message: commit message on the Hub.
        card: model card markdown. When given, it is written to `folder/README.md` (overwriting) before the upload.
        revision: branch to commit to (None: the default branch).
        create_pr: open a pull request instead of committing directly.

    Returns:
        the `huggingface_hub.CommitInfo` of the upload.

    Example:
        >>> from nonlocal_zoo.pretrained.hub import upload_folder_to_hub
        >>> upload_folder_to_hub("exported/i3d_nl5", "me/i3d_nl5_r50_32x2_kinetics400", card="# I3D NL5 ...")
    """
    from huggingface_hub import HfApi

    repo_id = normalize_repo_id(repo_id)
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"`folder` must be an existing directory. Received: folder={str(folder)!r}")
    if card is not None:
        if not isinstance(card, str):
            raise ValueError(f"`card` must be a markdown string. Received: card of type {type(card).__name__}")
        (folder / "README.md").write_text(card, encoding="utf-8")
    if not any(p.is_file() for p in folder.rglob("*")):
        raise ValueError(f"`folder` is empty; nothing to upload. Received: folder={str(folder)!r}")
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        commit_message=commit_message,
        revision=revision,
        create_pr=create_pr,
    )


def push_to_hub(
    model, repo_id, *, card=None, token=None, private=False, commit_message="Upload model with nonlocal_zoo"
):
    """Saves a Keras model in Keras's unzipped layout and uploads it to the Hub.

    The repository gets `config.json`, `metadata.json` and `model.weights.h5`. That is the layout
    `keras.saving.load_model("hf://org/repo")` reads, and `resolve_hf` returns it as a folder.

    Args:
        model: a built `keras.Model`.
        repo_id: 'org/repo' or 'hf://org/repo'.
        card: model card markdown (README.md), or None.
        token, private, commit_message: as in `upload_folder_to_hub`.

    Returns:
        the `huggingface_hub.CommitInfo` of the upload.

    Example:
        >>> import nonlocal_zoo
        >>> model = nonlocal_zoo.nl_resnet50_3d(weights="kinetics400")
        >>> nonlocal_zoo.push_to_hub(model, "me/i3d_nl5_r50_32x2_kinetics400", card=card_text)
    """
    import keras

    repo_id = normalize_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="nonlocal_zoo_push_") as tmp:
        folder = Path(tmp) / "model"
        keras.saving.save_model(model, str(folder), zipped=False)
        return upload_folder_to_hub(
            folder, repo_id, token=token, private=private, commit_message=commit_message, card=card
        )

