"""Labelled data for fine-tuning: read and checked from Parquet, encoded into training rows, and drawn in
length-bucketed batches; and writing it, for the demo and tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from albert_batch.contract import Task
from albert_batch.errors import InputError
from albert_batch.storage import Location
from albert_batch.training import bio
from albert_batch.training.config import FinetuneConfig

BUCKET_BATCHES = 16  # batches drawn together and grouped by length, so little compute goes to padding


@dataclass
class LabelledData:
    texts: list[str]
    targets: list[Any]  # label names (classify) or validated (start, end, label) spans (ner)
    rows: int
    skipped_blank: int = 0

    def sizes(self) -> dict[str, int]:
        sizes = {"rows": self.rows, "used": len(self.texts), "skipped_blank_text": self.skipped_blank}
        if self.targets and isinstance(self.targets[0], list):
            sizes["entities"] = sum(len(t) for t in self.targets)
        return sizes


def read_labelled(uri: str, config: FinetuneConfig, *, what: str) -> LabelledData:
    """Read and check a labelled Parquet file or folder; rows with blank text are skipped and counted."""
    loc = Location.parse(uri, what=what)
    target_column = config.label_column if config.task is Task.CLASSIFY else config.entities_column
    try:
        import pyarrow.dataset as pads

        dataset = pads.dataset(loc.path, filesystem=loc.filesystem, format="parquet",
                               exclude_invalid_files=False, ignore_prefixes=["_", "."])
    except (OSError, pa.ArrowInvalid) as err:
        raise InputError(f"cannot read {what} data {loc}: {err}") from err
    missing = [c for c in (config.text_column, target_column) if c not in dataset.schema.names]
    if missing:
        raise InputError(f"{what} data {loc} has no column {missing[0]!r}; available columns: "
                         f"{', '.join(dataset.schema.names)}")
    try:
        table = dataset.to_table(columns=[config.text_column, target_column])
    except (OSError, pa.ArrowInvalid) as err:
        raise InputError(f"cannot read {what} data {loc}: {err}") from err
    data = LabelledData(texts=[], targets=[], rows=table.num_rows)
    for row, (text, target) in enumerate(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True)):
        if text is None or not str(text).strip():
            data.skipped_blank += 1
            continue
        if config.task is Task.CLASSIFY:
            if target is None:
                raise InputError(f"{what} data {loc}: row {row} has no label")
            data.targets.append(str(target))
        else:
            data.targets.append(bio.validate_spans(text, target or [], row=row))
        data.texts.append(text)
    if not data.texts:
        raise InputError(f"{what} data {loc} has no rows with text")
    return data


def label_names(config: FinetuneConfig, train: LabelledData, evaluation: LabelledData) -> tuple[str, ...]:
    if config.task is Task.CLASSIFY:
        names = sorted(set(train.targets))
        unseen = sorted(set(evaluation.targets) - set(names))
        if unseen:
            raise InputError(f"eval labels {', '.join(unseen)} never occur in the training data")
        if len(names) < 2:
            raise InputError(f"training data has a single label ({names[0]}); classification needs two or more")
        return tuple(names)
    types = sorted({label for spans in train.targets for _, _, label in spans})
    if not types:
        raise InputError("training data has no entities")
    return bio.bio_labels(types)


def encode(texts: list[str], targets: list[Any], tokenizer: Any, task: Task, label2id: dict[str, int],
           max_length: int, max_windows: int | None = None) -> pa.Table:
    """Training rows: token ids with [CLS]/[SEP] and their labels, one per text (classify) or per token (ner).

    Classification truncates, as inference does. NER cuts long texts into consecutive windows instead, so
    every position up to ``max_length`` is learnt: inference covers long texts with windows of the model's
    full length, and positions never seen in training predict noise. ``max_windows`` keeps only the first
    windows of each text, to save time where a few very long documents hold a large share of the tokens
    (in the demo corpus, 2% of the documents hold a third of the tokens)."""
    if task is Task.CLASSIFY:
        encoded = tokenizer(texts, truncation=True, max_length=max_length, verbose=False)
        ids = [np.asarray(x, dtype=np.int32) for x in encoded["input_ids"]]
        return pa.table({"input_ids": ids, "label": pa.array([label2id[t] for t in targets], pa.int64())})
    encoded = tokenizer(texts, add_special_tokens=False, truncation=False, return_offsets_mapping=True,
                        return_special_tokens_mask=True, verbose=False)
    size = max_length - 2
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    rows_ids, rows_labels = [], []
    for spans, ids, offsets, special in zip(targets, encoded["input_ids"], encoded["offset_mapping"],
                                            encoded["special_tokens_mask"], strict=True):
        token_labels = bio.align_tokens(spans, np.asarray(offsets, dtype=np.int64).reshape(-1, 2),
                                        np.asarray(special, dtype=bool), label2id)
        for start in range(0, max(1, len(ids)), size)[:max_windows]:
            rows_ids.append(np.asarray([cls, *ids[start : start + size], sep], dtype=np.int32))
            rows_labels.append(np.concatenate([[bio.IGNORE_INDEX], token_labels[start : start + size],
                                               [bio.IGNORE_INDEX]]).astype(np.int64))
    return pa.table({"input_ids": rows_ids, "labels": rows_labels})


def length_buckets(lengths: list[int], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Row indexes in batches of similar length, in random order: the rows are shuffled, and every
    ``BUCKET_BATCHES`` batches' worth of them is sorted by length and cut into batches."""
    order = rng.permutation(len(lengths))
    span = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def bucketed_batches(rows: list[dict[str, np.ndarray]], batch_size: int, rng: np.random.Generator,
                     pad_id: int) -> Iterator[dict[str, Any]]:
    """Shuffle, then group rows of similar length into batches (in random order) and pad them."""
    import torch

    for b in length_buckets([len(row["input_ids"]) for row in rows], batch_size, rng):
        width = max(len(rows[i]["input_ids"]) for i in b)
        ids = torch.full((len(b), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(b), width), dtype=torch.long)
        token_level = "labels" in rows[b[0]]
        targets = torch.full((len(b), width), bio.IGNORE_INDEX, dtype=torch.long) if token_level else torch.empty(len(b), dtype=torch.long)
        for k, i in enumerate(b):
            n = len(rows[i]["input_ids"])
            ids[k, :n] = torch.as_tensor(rows[i]["input_ids"], dtype=torch.long)
            mask[k, :n] = 1
            if token_level:
                targets[k, :n] = torch.as_tensor(rows[i]["labels"], dtype=torch.long)
            else:
                targets[k] = int(rows[i]["label"])
        yield {"input_ids": ids, "attention_mask": mask, "labels": targets}


def write_labelled(path: str | Path, texts: list[str], targets: list[Any], task: Task) -> None:
    """Write labelled Parquet in the shape `finetune` reads (used by the demo and tests)."""
    if task is Task.CLASSIFY:
        table = pa.table({"text": texts, "label": targets})
    else:
        struct = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("label", pa.string())])
        spans = [[{"start": s, "end": e, "label": label} for s, e, label in t] for t in targets]
        table = pa.table({"text": texts, "entities": pa.array(spans, pa.list_(struct))})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))
