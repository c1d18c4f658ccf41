"""Model locations: an S3 prefix is downloaded once per node into a cache keyed by location and ETag, and
fetched again when it changes; hub ids that cannot be fetched fail with a clear message."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from albert_batch import ModelLoadError, Task
from albert_batch.inference import models


@pytest.fixture
def s3_model(s3_client, tiny_models, tmp_path, monkeypatch) -> pafs.S3FileSystem:
    monkeypatch.setenv("ALBERT_BATCH_CACHE", str(tmp_path / "cache"))
    fs = s3_client
    fs.create_dir("models")
    for path in Path(tiny_models["classifier"]).iterdir():
        with fs.open_output_stream(f"models/clf/{path.name}") as out:
            out.write(path.read_bytes())
    return fs


def test_an_s3_model_is_downloaded_once_and_again_when_it_changes(s3_model, tmp_path):
    first, _ = models.resolve("s3://models/clf")
    assert sorted(p.name for p in Path(first).iterdir()) == sorted(
        ["config.json", "model.safetensors", "spiece.model", "tokenizer.json", "tokenizer_config.json"]
    )
    stamp = (Path(first) / "model.safetensors").stat().st_mtime_ns
    again, _ = models.resolve("s3://models/clf")
    assert again == first and (Path(again) / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "cache/models").iterdir() if p.name.startswith(".download")]

    with s3_model.open_output_stream("models/clf/config.json") as out:
        out.write((Path(first) / "config.json").read_bytes().replace(b'"negative"', b'"bad"'))
    changed, _ = models.resolve("s3://models/clf")
    assert changed != first
    assert models.inspect("s3://models/clf", Task.CLASSIFY).labels == ("bad", "neutral", "positive")


def test_an_empty_s3_prefix_is_a_clear_error(s3_model):
    with pytest.raises(ModelLoadError, match="holds no model files"):
        models.resolve("s3://models/nothing-here")


def test_an_unreachable_hub_id_says_it_is_neither_a_folder_nor_fetchable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"org/missing-model@v1 is not a local folder, and fetching it"):
        models.resolve("org/missing-model@v1")


def test_a_hub_download_fetches_pickle_weights_only_when_they_are_allowed(monkeypatch, tmp_path):
    import huggingface_hub  # no hub is reachable here: record what the download would ask for

    asked: list[list[str]] = []

    def snapshot_download(repo, revision, allow_patterns):
        asked.append(allow_patterns)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert models.resolve("org/model@v2") == (str(tmp_path), "v2")
    models.resolve("org/model@v2", allow_pickle_weights=True)

    def fetched(name: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in patterns)

    refused, allowed = asked
    assert fetched("model.safetensors", refused) and fetched("spiece.model", refused)
    assert not fetched("pytorch_model.bin", refused)
    assert fetched("pytorch_model.bin", allowed) and fetched("pytorch_model-00001-of-00002.bin", allowed)


def test_an_actor_refuses_a_model_overwritten_since_the_run_started(tiny_models, tmp_path):
    from albert_batch.inference.predictors import load_predictors

    folder = tmp_path / "clf"
    shutil.copytree(tiny_models["classifier"], folder)
    at_start = {Task.CLASSIFY: models.inspect(str(folder), Task.CLASSIFY).weights_sha256}
    assert load_predictors({Task.CLASSIFY: str(folder)}, at_start, load_model=False)

    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")  # a new version, published to the same place
    with pytest.raises(ModelLoadError, match=rf"model {folder} changed during the run: its weights are \w+"):
        load_predictors({Task.CLASSIFY: str(folder)}, at_start, load_model=False)


def test_a_model_stage_counts_as_started_before_its_models_load_and_fails_its_first_batch(tiny_models, monkeypatch):
    """A model actor's models load on a thread of their own, so Ray Data reads and tokenizes the first batch
    meanwhile; a model that cannot be loaded fails the first batch with the loader's own error."""
    import pyarrow as pa

    from albert_batch.config import Precision
    from albert_batch.pipeline.stages import ModelStage, TokenizeStage

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the stage sets it for its process; restored afterwards
    uris = {Task.CLASSIFY: tiny_models["classifier"]}
    batch = TokenizeStage(model_uris=uris)(pa.table({"id": [1], "text": ["Anna flew to Berlin."]}))
    stage = ModelStage(model_uris=uris, weights_sha256={Task.CLASSIFY: "0" * 64}, precision=Precision.FP32,
                       use_gpu=False, torch_threads=1, max_tokens_per_forward=512, window_overlap=0)
    with pytest.raises(ModelLoadError, match="changed during the run"):
        stage(batch)
    good = ModelStage(model_uris=uris, weights_sha256={Task.CLASSIFY: models.inspect(uris[Task.CLASSIFY],
                                                                                     Task.CLASSIFY).weights_sha256},
                      precision=Precision.FP32, use_gpu=False, torch_threads=1, max_tokens_per_forward=512,
                      window_overlap=0)
    assert good(batch).column("classify.label").to_pylist()[0] in ("negative", "neutral", "positive")


def test_a_model_stage_that_tokenizes_gives_what_the_tokenize_stage_then_the_model_stage_give(tiny_models,
                                                                                                 monkeypatch):
    """A CPU run's model actors tokenize their own batches: rows rejected (null, blank, too long) and results
    are those of the two stages in a row, column for column."""
    import pyarrow as pa

    from albert_batch.config import Precision
    from albert_batch.pipeline.stages import ModelStage, TokenizeStage

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the stage sets it for its process; restored afterwards
    uris = {Task.CLASSIFY: tiny_models["classifier"], Task.NER: tiny_models["ner"]}
    digests = {task: models.inspect(uri, task).weights_sha256 for task, uri in uris.items()}
    texts = ["Anna flew to Berlin.", None, "   ", "x" * 200, "Anna flew to Berlin.", "Paris in May, said Marie."]
    batch = pa.table({"id": list(range(len(texts))), "text": texts})

    def model(**tokenizing):
        return ModelStage(model_uris=uris, weights_sha256=digests, precision=Precision.FP32, use_gpu=False,
                          torch_threads=1, max_tokens_per_forward=512, window_overlap=0, **tokenizing)

    apart = model()(TokenizeStage(model_uris=uris, max_text_chars=100)(batch)).drop_columns(["processed_at"])
    together = model(tokenize=True, max_text_chars=100)(batch).drop_columns(["processed_at"])
    assert together.equals(apart), (together.to_pylist(), apart.to_pylist())
    assert together.column("reject_reason").to_pylist() == [None, "null_text", "blank_text", "too_long", None, None]


def test_a_sharded_model_missing_a_shard_or_with_a_broken_index_is_named(tiny_models, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_models["classifier"], folder)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = folder / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}')
    with pytest.raises(ModelLoadError, match=r"lacks the weight shard\(s\) model-00002-of-00002.safetensors that "
                                             r"model.safetensors.index.json names"):
        models.inspect(str(folder), Task.CLASSIFY)
    index.write_text('{"metadata": {}}')
    with pytest.raises(ModelLoadError, match=r"model.safetensors.index.json is not a readable weight index \(KeyError"):
        models.inspect(str(folder), Task.CLASSIFY)
