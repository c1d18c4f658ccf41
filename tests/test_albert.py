"""The model actors' ALBERT (`albert_batch.inference.albert`) computes what transformers' classes compute, to the
bit, on every path a run takes: both heads, padded and unpadded batches, fp32, bf16 and int8, with the kernels
each precision runs with on this CPU; bf16's oneDNN linear layers compute what torch's do; and a checkpoint it
cannot run is refused with the reason."""

from __future__ import annotations

import json
import shutil

import pytest

from albert_batch.config import Precision
from albert_batch.contract import Task
from albert_batch.errors import ModelLoadError
from albert_batch.inference import kernels, models


def load(folder, task: Task, dtype):
    """The model as a run's model actor loads it (`models.load_model`, which builds `albert_batch.inference.albert`'s)."""
    import torch

    return models.load_model(models.inspect(str(folder), task, hash_weights=False), dtype=dtype,
                             device=torch.device("cpu"))


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
    ours = load(tiny_models[folder], task, dtype)
    cpu = torch.device("cpu")
    for model in (theirs, ours):
        kernels.prepare(model, precision=Precision(precision), dtype=dtype, device=cpu)
    packed = sum(isinstance(module, kernels.PackedLinear) for module in ours.modules())
    assert packed == (7 if precision == "bf16" and kernels.onednn_bf16() else 0)  # the encoder's, one shared layer
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
        load(folder, Task.CLASSIFY, torch.float32)

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "swish"}))
    with pytest.raises(ModelLoadError, match="hidden_act 'swish' is not one of gelu_new, gelu"):
        load(folder, Task.CLASSIFY, torch.float32)


def test_sharded_and_opted_in_pickle_weights_give_the_same_model(tiny_models, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    source = tiny_models["classifier"]
    weights = load_file(f"{source}/model.safetensors")
    sharded, pickled = tmp_path / "sharded", tmp_path / "pickled"
    for folder in (sharded, pickled):
        shutil.copytree(source, folder)
        (folder / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, held in shards.items():
        save_file({name: weights[name] for name in held}, sharded / shard)
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {name: shard for shard, held in shards.items() for name in held}}))
    torch.save(weights, pickled / "pytorch_model.bin")

    want = load(source, Task.CLASSIFY, torch.float32)
    got = {"sharded": load(sharded, Task.CLASSIFY, torch.float32),
           "pickled": models.load_model(models.inspect(str(pickled), Task.CLASSIFY, allow_pickle_weights=True,
                                                       hash_weights=False),
                                        dtype=torch.float32, device=torch.device("cpu"), allow_pickle_weights=True)}
    ids, mask = batch(want.config.vocab_size)
    with torch.inference_mode():
        for name, model in got.items():
            assert torch.equal(model(ids, mask), want(ids, mask)), name
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        load(pickled, Task.CLASSIFY, torch.float32)


def test_linear_layers_on_onednn_compute_what_torch_s_do(tiny_models):
    """`kernels.pack_linears`: a packed layer gives torch's bf16 result to the bit; the feed-forward's GELU
    inside its product differs from the GELU after it by bf16 rounding alone (one rounding fewer), and the
    model's logits with every layer packed stay that close to the unpacked model's, with the same labels.
    On a CPU without bf16 instructions (where `prepare` packs nothing, as asserted above), the same in fp32,
    where oneDNN's products sum in another order than torch's: within fp32 rounding of them."""
    import torch

    dtype, bit_exact = (torch.bfloat16, True) if kernels.onednn_bf16() else (torch.float32, False)
    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 256).to(dtype)
    x = torch.randn(3, 11, 64, generator=generator).to(dtype)
    gelu = torch.nn.GELU(approximate="tanh")
    with torch.inference_mode():
        got, want = kernels.PackedLinear(linear)(x), linear(x)
        assert torch.equal(got, want) if bit_exact else torch.allclose(got, want, rtol=1e-5, atol=1e-6)
        fused, apart = kernels.PackedLinear(linear, "gelu", "tanh")(x).float(), gelu(linear(x)).float()
        assert fused.shape == (3, 11, 256) and torch.allclose(fused, apart, rtol=2**-7, atol=2**-7)

    exact_model = load(tiny_models["classifier"], Task.CLASSIFY, torch.float32)
    plain = load(tiny_models["classifier"], Task.CLASSIFY, dtype)
    packed = load(tiny_models["classifier"], Task.CLASSIFY, dtype)
    for model in (plain, packed):
        assert kernels.fuse_tanh_gelu(model) == 1
    assert kernels.pack_linears(packed) == 7
    assert isinstance(packed.albert.encoder.albert_layer_groups[0].albert_layers[0].activation, torch.nn.Identity)
    ids, mask = batch(plain.config.vocab_size)
    with torch.inference_mode():
        exact, want, got = (model(ids, mask).float() for model in (exact_model, plain, packed))
    if bit_exact:  # bf16: no further from fp32 than the unpacked model
        assert (got - exact).abs().max() <= 1.5 * (want - exact).abs().max() + 1e-6
    else:
        assert torch.allclose(got, exact, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(-1), exact.argmax(-1))


@pytest.mark.parametrize("task", [Task.CLASSIFY, Task.NER])
def test_auto_in_fp32_runs_the_fused_gelu_within_fp32_rounding_of_transformers(tiny_models, task):
    """Where ``auto`` runs fp32 (CPUs without bf16 instructions) the model takes torch's fused tanh GELU, not
    transformers' op-by-op one (`--precision fp32` keeps that, above): its logits differ from transformers'
    by fp32 rounding alone (1e-5 of the logits' scale), with the same labels; nothing else changes (no
    oneDNN layers)."""
    import torch
    import transformers

    folder, head = HEADS[task]
    theirs = getattr(transformers, head).from_pretrained(tiny_models[folder], dtype=torch.float32).eval()
    ours = load(tiny_models[folder], task, torch.float32)
    kernels.prepare(ours, precision=Precision.AUTO, dtype=torch.float32, device=torch.device("cpu"))
    gelus = [type(module).__name__ for module in ours.modules() if "GELU" in type(module).__name__]
    assert gelus == ["GELU"] and not any(isinstance(m, kernels.PackedLinear) for m in ours.modules())
    ids, mask = batch(ours.config.vocab_size)
    with torch.inference_mode():
        want, got = theirs(input_ids=ids, attention_mask=mask).logits, ours(ids, mask)
    assert got.dtype == torch.float32 and (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert torch.equal(got.argmax(-1), want.argmax(-1))
