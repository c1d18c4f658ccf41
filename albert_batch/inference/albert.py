"""ALBERT for inference in plain torch: what transformers' ``AlbertForSequenceClassification`` and
``AlbertForTokenClassification`` compute in eval mode, from the same ``config.json`` and weights, op for op
(a test compares their logits on every path a run takes).

Model actors load their models with this module rather than with transformers: importing transformers'
ALBERT classes takes about 2 s of CPU in every new model actor process, more than torch itself, and is on
the path to a run's first batch (BENCHMARKS.md, "Start-up"). Training (`albert_batch.training`) uses
transformers' classes, whose checkpoints this module reads; the module and parameter names are theirs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from albert_batch.contract import Task
from albert_batch.errors import ModelLoadError


class NewGELU(nn.Module):
    """transformers' ``gelu_new`` (ALBERT's default activation): the tanh approximation of GELU, written op by
    op as transformers writes it, so that fp32 results are theirs. `albert_batch.inference.kernels.fuse_tanh_gelu`
    swaps it for torch's fused kernel of the same formula where exactness to the op is not the contract."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {"gelu_new": NewGELU, "gelu": nn.GELU, "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
               "relu": nn.ReLU}


@dataclass(frozen=True)
class AlbertConfig:
    """The fields of an ALBERT ``config.json`` that inference needs, with transformers' defaults."""

    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 4096
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    inner_group_num: int = 1
    hidden_act: str = "gelu_new"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    num_labels: int = 2
    problem_type: str | None = None

    @classmethod
    def of(cls, config: dict[str, Any]) -> AlbertConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in known}
        if config.get("id2label"):
            values["num_labels"] = len(config["id2label"])
        return cls(**values)


class AlbertAttention(nn.Module):
    def __init__(self, config: AlbertConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_size**-0.5
        self.query = nn.Linear(config.hidden_size, self.heads * self.head_size)
        self.key = nn.Linear(config.hidden_size, self.heads * self.head_size)
        self.value = nn.Linear(config.hidden_size, self.heads * self.head_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        shape = (*hidden.shape[:-1], -1, self.head_size)
        query, key, value = (layer(hidden).view(*shape).transpose(1, 2) for layer in (self.query, self.key, self.value))
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=self.scaling)
        attended = attended.transpose(1, 2).reshape(*hidden.shape[:-1], -1).contiguous()
        return self.LayerNorm(hidden + self.dense(attended))


class AlbertLayer(nn.Module):
    def __init__(self, config: AlbertConfig) -> None:
        super().__init__()
        self.attention = AlbertAttention(config)
        self.ffn = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation = ACTIVATIONS[config.hidden_act]()
        self.full_layer_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attended = self.attention(hidden, mask)
        return self.full_layer_layer_norm(self.ffn_output(self.activation(self.ffn(attended))) + attended)


class AlbertLayerGroup(nn.Module):
    def __init__(self, config: AlbertConfig) -> None:
        super().__init__()
        self.albert_layers = nn.ModuleList([AlbertLayer(config) for _ in range(config.inner_group_num)])

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.albert_layers:
            hidden = layer(hidden, mask)
        return hidden


class AlbertEncoder(nn.Module):
    def __init__(self, config: AlbertConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding_hidden_mapping_in = nn.Linear(config.embedding_size, config.hidden_size)
        self.albert_layer_groups = nn.ModuleList([AlbertLayerGroup(config) for _ in range(config.num_hidden_groups)])

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        hidden = self.embedding_hidden_mapping_in(hidden)
        layers, groups = self.config.num_hidden_layers, self.config.num_hidden_groups
        for number in range(layers):  # ALBERT shares each group's layers across its share of the depth
            hidden = self.albert_layer_groups[int(number / (layers / groups))](hidden, mask)
        return hidden


class AlbertEmbeddings(nn.Module):
    def __init__(self, config: AlbertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.embedding_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.embedding_size)
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # One segment: token type 0 everywhere, as the tokenizer gives a single text.
        width = input_ids.shape[1]
        embedded = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(embedded + self.position_embeddings.weight[:width])


class AlbertModel(nn.Module):
    def __init__(self, config: AlbertConfig, *, pooler: bool) -> None:
        super().__init__()
        self.embeddings = AlbertEmbeddings(config)
        self.encoder = AlbertEncoder(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if pooler else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        # No padding: no mask, as transformers passes none then (and the attention kernel is the same one). A
        # mask on a GPU is taken as it is: reading it back would wait for the device.
        if attention_mask is None or (attention_mask.device.type == "cpu" and bool(attention_mask.all())):
            return self.encoder(self.embeddings(input_ids), None)
        return self.encoder(self.embeddings(input_ids), attention_mask[:, None, None, :].bool())


class AlbertForInference(nn.Module):
    """ALBERT with a task's head: ``forward(input_ids, attention_mask)`` returns the logits, one row per text
    (classification: the pooled first token through the classifier) or per token (NER). No mask: no row
    is padded."""

    def __init__(self, config: AlbertConfig, task: Task) -> None:
        super().__init__()
        self.config, self.task = config, task
        self.albert = AlbertModel(config, pooler=task is Task.CLASSIFY)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.albert(input_ids, attention_mask)
        if self.task is Task.NER:
            return self.classifier(hidden)
        assert self.albert.pooler is not None
        return self.classifier(torch.tanh(self.albert.pooler(hidden[:, 0])))


def load(folder: Path, task: Task, files: list[Path], *, dtype: torch.dtype) -> AlbertForInference:
    """The model in ``folder`` (``config.json``, as `albert_batch.inference.models.inspect` checked it, and the
    weight ``files``: safetensors, or pickles the caller allowed; a sharded model's shards) for ``task``, in
    eval mode, in ``dtype``."""
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(f"model {folder}: position_embedding_type {config['position_embedding_type']!r} is not "
                             "supported; albert-batch runs ALBERT with absolute positions")
    if (act := config.get("hidden_act", "gelu_new")) not in ACTIVATIONS:
        raise ModelLoadError(f"model {folder}: hidden_act {act!r} is not one of {', '.join(ACTIVATIONS)}")
    model = AlbertForInference(AlbertConfig.of(config), task)
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        weights.update(load_file(path) if path.suffix == ".safetensors"
                       else torch.load(path, map_location="cpu", weights_only=True))
    wanted = set(model.state_dict())
    missing = sorted(wanted - set(weights))
    if missing:
        raise ModelLoadError(f"model {folder}: its weights lack {len(missing)} tensor(s) the {task.value} head needs, "
                             f"e.g. {', '.join(missing[:3])}")
    model.load_state_dict({name: weights[name] for name in wanted}, assign=True)
    return model.to(dtype).eval()
