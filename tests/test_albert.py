"""The model actors' ALBERT (`albert_batch.inference.albert`) computes what transformers' classes compute, to the
bit, on every path a run takes: both heads, padded and unpadded batches, fp32, bf16 and int8; and a checkpoint
it cannot run is refused with the reason."""

from __future__ import annotations

import json
import shutil

import pytest

from albert_batch.contract import Task
from albert_batch.errors import ModelLoadError
from albert_batch.inference import albert
from albert_batch.inference.device import fuse_tanh_gelu, quantize_linear_int8

HEADS = {Task.CLASSIFY: ("classifier", "AlbertForSequenceClassification"),
         Task.NER: ("ner", "AlbertForTokenClassification")}


def batch(vocab_size: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (4, 37), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    mask[3, 5:] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("task", [Task.CLASSIFY, Task.NER])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_logits_equal_transformers_to_the_bit(tiny_models, task, precision):
    import torch
    import transformers

    folder, head = HEADS[task]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    theirs = getattr(transformers, head).from_pretrained(tiny_models[folder], dtype=dtype).eval()
    ours = albert.load(albert.Path(tiny_models[folder]), task, dtype=dtype)
    for model in (theirs, ours):
        if precision == "int8":
            quantize_linear_int8(model)
        if precision != "fp32":
            assert fuse_tanh_gelu(model) == 1
    ids, mask = batch(ours.config.vocab_size)
    for attention in (mask, torch.ones_like(mask)):  # with padding, and without (no mask at all)
        with torch.inference_mode():
            want = theirs(input_ids=ids, attention_mask=attention).logits
            got = ours(ids, attention)
            unmasked = ours(ids, None) if bool(attention.all()) else got
        assert got.dtype == want.dtype and torch.equal(got, want) and torch.equal(unmasked, want)


def test_a_checkpoint_it_cannot_run_is_refused_with_the_reason(tiny_models, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "classifier"
    shutil.copytree(tiny_models["classifier"], folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("albert.pooler")}, folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"lack 2 tensor\(s\) the classify head needs, e.g. albert.pooler.bias"):
        albert.load(folder, Task.CLASSIFY, dtype=torch.float32)

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "swish"}))
    with pytest.raises(ModelLoadError, match="hidden_act 'swish' is not one of gelu_new, gelu"):
        albert.load(folder, Task.CLASSIFY, dtype=torch.float32)
