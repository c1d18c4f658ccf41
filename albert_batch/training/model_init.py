"""Building ALBERT models from scratch, offline: a SentencePiece tokenizer trained on your texts and an
``AlbertConfig``-shaped model with fresh weights, saved as a Hugging Face folder (safetensors)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from albert_batch.contract import Task

log = logging.getLogger(__name__)

# Factorised embeddings (E) and one shared layer group, as in the ALBERT paper; no dropout, as in ALBERT v2
# (on 2 CPU cores, dropout alone costs a fifth of the tiny model's training step).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"embedding_size": 64, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 256},
    "base": {"embedding_size": 128, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072},
}
MAX_LENGTH = 512
# The sentence-order head's two classes, as AlbertForPreTraining's sentence_order_label numbers them.
SENTENCE_ORDER_LABELS = ("in_order", "swapped")


def train_tokenizer(texts: Iterable[str], folder: str | Path, *, vocab_size: int = 8000) -> Path:
    """Train a SentencePiece unigram model on ``texts`` and save it as an ALBERT tokenizer in ``folder``."""
    import sentencepiece as spm
    from transformers import AlbertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=(t for t in texts if t and t.strip()),
        model_prefix=str(folder / "spiece"),
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        pad_piece="<pad>",
        unk_piece="<unk>",
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        num_threads=2,
        max_sentence_length=1 << 16,  # long documents teach the vocabulary too
        minloglevel=2,
    )
    (folder / "spiece.vocab").unlink(missing_ok=True)
    # model_max_length matters: without it, truncation=True silently does nothing. The vocabulary is learnt
    # from cased, accented text, so the tokenizer must not lowercase or strip accents (ALBERT's defaults),
    # or most learnt pieces would never match; case is also the strongest cue for entities.
    AlbertTokenizer.from_pretrained(
        str(folder), model_max_length=MAX_LENGTH, do_lower_case=False, keep_accents=True
    ).save_pretrained(str(folder))
    return folder


def init_model(
    folder: str | Path,
    task: Task,
    labels: Sequence[str],
    *,
    texts: Iterable[str] | None = None,
    size: str = "tiny",
    seed: int = 0,
    vocab_size: int = 8000,
    initializer_range: float = 0.02,
) -> Path:
    """Write an untrained ALBERT model for ``task`` with ``labels`` into ``folder``.

    The tokenizer is trained on ``texts`` unless ``folder`` already holds one."""
    from transformers import AlbertForSequenceClassification, AlbertForTokenClassification

    head = AlbertForSequenceClassification if task is Task.CLASSIFY else AlbertForTokenClassification
    _init(folder, head, labels, texts=texts, size=size, seed=seed, vocab_size=vocab_size,
          initializer_range=initializer_range)
    log.info("initialised %s %s model with %d labels in %s", size, task.value, len(labels), folder)
    return Path(folder)


def init_pretraining_model(folder: str | Path, *, texts: Iterable[str], size: str = "tiny", seed: int = 0,
                           vocab_size: int = 8000) -> Path:
    """Write an untrained `AlbertForPreTraining` (masked-LM and sentence-order heads) into ``folder``, with a
    tokenizer trained on ``texts``."""
    from transformers import AlbertForPreTraining

    _init(folder, AlbertForPreTraining, SENTENCE_ORDER_LABELS, texts=texts, size=size, seed=seed,
          vocab_size=vocab_size, initializer_range=0.02)
    log.info("initialised %s pretraining model in %s", size, folder)
    return Path(folder)


def _init(folder: str | Path, head: Any, labels: Sequence[str], *, texts: Iterable[str] | None, size: str, seed: int,
          vocab_size: int, initializer_range: float) -> None:
    import torch
    from transformers import AlbertConfig, AutoTokenizer

    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(SIZES)}")
    folder = Path(folder)
    if not (folder / "spiece.model").exists():
        if texts is None:
            raise ValueError("texts are needed to train a tokenizer")
        train_tokenizer(texts, folder, vocab_size=vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = AlbertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_LENGTH,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
        classifier_dropout_prob=0.1,
        **SIZES[size],
    )
    torch.manual_seed(seed)
    head(config).save_pretrained(str(folder), safe_serialization=True)
