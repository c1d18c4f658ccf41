"""Finding, checking and loading ALBERT models: local folders, ``s3://`` prefixes and hub ids.

A model location resolves to a local folder (S3 prefixes are downloaded once per node into a cache and
moved into place atomically), which is then checked before anything heavy is loaded: an ALBERT
``config.json`` with the right head and a label map, safetensors weights, and tokenizer files. Pickle
weights are refused unless the caller opts in; remote code is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from albert_batch import storage
from albert_batch.config import cache_home
from albert_batch.contract import Task
from albert_batch.errors import AlbertBatchError, ModelLoadError
from albert_batch.storage import Location

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from albert_batch.inference.albert import AlbertForInference

log = logging.getLogger(__name__)

HEADS = {Task.CLASSIFY: "AlbertForSequenceClassification", Task.NER: "AlbertForTokenClassification"}
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".bin")


def cache_root() -> Path:
    return cache_home() / "models"


@dataclass(frozen=True)
class ModelInfo:
    """What the driver learned about a model before the run; recorded in the manifest."""

    uri: str
    task: Task
    local_dir: str
    revision: str | None
    labels: tuple[str, ...]
    max_length: int
    weights_sha256: str

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "location": self.uri,
            "revision": self.revision,
            "labels": list(self.labels),
            "max_length": self.max_length,
            "weights_sha256": self.weights_sha256,
        }


def resolve(uri: str, *, allow_pickle_weights: bool = False) -> tuple[str, str | None]:
    """Return ``(local folder, revision)`` for a model location, downloading it if needed. A hub download
    fetches pickle weights (``pytorch_model*.bin``) only with ``allow_pickle_weights``."""
    if uri.startswith(("s3://", "s3a://")):
        return _download_s3(Location.parse(uri, what="model location")), None
    local = Location.parse(uri, what="model location") if uri.startswith("file://") else None
    path = Path(local.path if local else os.path.expanduser(uri))
    if path.is_dir():
        return str(path.resolve()), None
    match = HUB_ID.match(uri)
    if path.exists():
        raise ModelLoadError(f"model location {uri} is a file; give the model's folder")
    if local is None and match and not uri.startswith((".", "/", "~")):
        return _download_hub(match["repo"], match["revision"], allow_pickle_weights=allow_pickle_weights)
    raise ModelLoadError(f"model folder {uri} does not exist")


def _download_hub(repo: str, revision: str | None, *, allow_pickle_weights: bool) -> tuple[str, str | None]:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "spiece.model", "*.txt"]
    if allow_pickle_weights:
        patterns.append("pytorch_model*.bin")
    try:
        folder = snapshot_download(repo, revision=revision, allow_patterns=patterns)
    except Exception as err:  # the hub client raises many unrelated types; all mean "cannot fetch"
        raise ModelLoadError(
            f"model {repo}{'@' + revision if revision else ''} is not a local folder, and fetching it from the "
            f"hub failed: {type(err).__name__}: {err}"
        ) from err
    return folder, revision or Path(folder).name


def _download_s3(prefix: Location) -> str:
    """Download a model prefix once per node. The cache key covers the location and every object's name and
    ETag, so a changed model is fetched again; the folder appears atomically by rename, so concurrent actors
    on one node never see half a file."""
    try:
        files = [f for f in storage.list_files(prefix) if f.base_name.endswith(MODEL_FILE_SUFFIXES)]
    except AlbertBatchError as err:
        raise ModelLoadError(f"cannot list model location {prefix}: {err}") from err
    if not files:
        raise ModelLoadError(f"model location {prefix} holds no model files")
    key = hashlib.sha256(prefix.uri.encode())
    try:
        for f in files:
            key.update(f"{f.path}|{storage.etag(Location('s3', f.path))}".encode())
    except AlbertBatchError as err:
        raise ModelLoadError(f"cannot inspect model location {prefix}: {err}") from err
    target = cache_root() / key.hexdigest()[:32]
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        for f in files:
            relative = f.path[len(prefix.path) :].lstrip("/")
            dest = tmp / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(storage.read_bytes(Location("s3", f.path)))
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # another actor on this node won the race: use its copy
                raise
    except AlbertBatchError as err:
        raise ModelLoadError(f"cannot download model {prefix}: {err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("downloaded model %s into %s", prefix, target)
    return str(target)


def inspect(uri: str, task: Task, *, allow_pickle_weights: bool = False, hash_weights: bool = True) -> ModelInfo:
    """Resolve and check a model location without loading weights; raise ModelLoadError naming the gap."""
    local_dir, revision = resolve(uri, allow_pickle_weights=allow_pickle_weights)
    folder = Path(local_dir)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"model {uri} has no config.json; expected a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model {uri}: config.json is not readable JSON: {err}") from err
    model_type = config.get("model_type")
    if model_type != "albert":
        raise ModelLoadError(f"model {uri} is of type {model_type!r}; albert-batch runs ALBERT models (model_type 'albert')")
    architectures = config.get("architectures") or []
    if architectures and HEADS[task] not in architectures:
        raise ModelLoadError(
            f"model {uri} has the head {', '.join(architectures)}; the {task.value} task needs {HEADS[task]}"
        )
    id2label = config.get("id2label")
    if not id2label:
        raise ModelLoadError(f"model {uri} has no id2label in config.json; the {task.value} task needs its label names")
    labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
    weights = _weight_paths(uri, folder, allow_pickle_weights)
    if not any((folder / n).is_file() for n in TOKENIZER_FILES):
        raise ModelLoadError(f"model {uri} has no tokenizer files: expected {' or '.join(TOKENIZER_FILES)}")
    max_length = min(int(config.get("max_position_embeddings", 512)), _tokenizer_max_length(folder))
    return ModelInfo(
        uri=uri,
        task=task,
        local_dir=local_dir,
        revision=revision,
        labels=labels,
        max_length=max_length,
        weights_sha256=_sha256_files(_weight_files(uri, weights)) if hash_weights else "",
    )


def _weight_paths(uri: str, folder: Path, allow_pickle_weights: bool) -> list[Path]:
    """The model's weight files as its folder names them (safetensors, a file or an index; else pickles, where
    allowed); ModelLoadError naming the gap when there are none it may load."""
    weights = [folder / n for n in SAFETENSORS_FILES if (folder / n).is_file()]
    if weights:
        return weights
    pickles = [folder / n for n in PICKLE_FILES if (folder / n).is_file()]
    if pickles and not allow_pickle_weights:
        raise ModelLoadError(
            f"model {uri} has only pickle weights ({pickles[0].name}); convert them to model.safetensors, "
            "or opt in with allow_pickle_weights if you trust the source"
        )
    if not pickles:
        raise ModelLoadError(
            f"model {uri} has no weights: expected model.safetensors (or pytorch_model.bin, with allow_pickle_weights)"
        )
    return pickles


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    """``tokenizer_config.json``, or nothing where it is missing or unreadable."""
    try:
        found = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _tokenizer_max_length(folder: Path) -> int:
    value = _tokenizer_config(folder).get("model_max_length")
    return int(value) if isinstance(value, (int, float)) and 0 < value < 1_000_000 else 1_000_000


def _weight_files(uri: str, found: list[Path]) -> list[Path]:
    """The weight files, with a sharded model's index replaced by the shards it names."""
    files = []
    for path in found:
        if not path.name.endswith(".index.json"):
            files.append(path)
            continue
        try:
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ModelLoadError(f"model {uri}: {path.name} is not a readable weight index ({type(err).__name__}: {err})") from err
        missing = [s for s in shards if not (path.parent / s).is_file()]
        if missing:
            raise ModelLoadError(f"model {uri} lacks the weight shard(s) {', '.join(missing)} that {path.name} names")
        files.extend(path.parent / s for s in shards)
    return files


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_tokenizer(info: ModelInfo) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(info.local_dir, trust_remote_code=False)
    except Exception as err:  # tokenizer loaders raise a zoo of types for a broken folder
        raise ModelLoadError(f"cannot load the tokenizer of model {info.uri}: {err}") from err
    if not tokenizer.is_fast:
        raise ModelLoadError(f"model {info.uri}: a fast (tokenizers-backed) tokenizer is needed for offsets")
    tokenizer.model_max_length = info.max_length
    return tokenizer


def special_token_ids(info: ModelInfo, token_to_id: Callable[[str], int | None]) -> tuple[int, int, int]:
    """The ids of the tokens that open and close a sequence and pad it, as the model's tokenizer names them
    (``tokenizer_config.json``; ALBERT's own names where it names none), through ``token_to_id`` (the Rust
    tokenizer's). No padding token: 0."""
    named = _tokenizer_config(Path(info.local_dir))
    ids = []
    for role, default in (("cls_token", "[CLS]"), ("sep_token", "[SEP]"), ("pad_token", "<pad>")):
        token = named.get(role) or default
        ids.append(token_to_id(str(token.get("content", default) if isinstance(token, dict) else token)))
    cls_id, sep_id, pad_id = ids
    if cls_id is None or sep_id is None:
        raise ModelLoadError(f"model {info.uri}: its tokenizer has no id for the sequence tokens "
                             f"{named.get('cls_token', '[CLS]')!r} and {named.get('sep_token', '[SEP]')!r}")
    return cls_id, sep_id, pad_id or 0


def load_model(info: ModelInfo, *, dtype: torch.dtype, device: torch.device,
               allow_pickle_weights: bool = False) -> AlbertForInference:
    """The model for ``info``'s task, in eval mode, in ``dtype`` on ``device`` (`albert_batch.inference.albert`:
    transformers' computation without importing transformers)."""
    from albert_batch.inference import albert

    folder = Path(info.local_dir)
    files = _weight_files(info.uri, _weight_paths(info.uri, folder, allow_pickle_weights))
    try:
        model = albert.load(folder, info.task, files, dtype=dtype)
    except ModelLoadError as err:
        raise ModelLoadError(f"cannot load model {info.uri}: {err}") from err
    except Exception as err:  # a truncated or foreign weight file: safetensors and torch raise their own types
        raise ModelLoadError(f"cannot load model {info.uri}: {type(err).__name__}: {err}") from err
    return model.to(device)
