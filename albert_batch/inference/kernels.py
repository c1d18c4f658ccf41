"""The kernels a loaded model runs with, by device and precision (`prepare`).

- ``--precision fp32`` keeps transformers' ops: its results are Hugging Face's pipelines' to the bit.
- Every other precision runs the feed-forward's tanh GELU as torch's one fused kernel (`fuse_tanh_gelu`):
  bf16, int8, and ``auto`` where it runs fp32 (CPUs without bf16 instructions), whose logits differ from
  Hugging Face's by fp32 rounding alone (within 1e-5 of the logits' scale; 3e-7 at most on ALBERT-base,
  BENCHMARKS.md).
- int8 quantises the encoder's linear layers (`quantize_linear_int8`).
- bf16 on CPUs with bf16 instructions runs the encoder's linear layers as oneDNN products on weights laid out
  once at load, the tanh GELU inside the feed-forward's first product (`pack_linears`): what
  ``torch.compile``'s weight freezing does for linear layers, without compiling.

BENCHMARKS.md ("What makes it fast") has what each is worth.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from albert_batch.config import Precision
from albert_batch.inference.device import cpu_has_native_bf16


def prepare(model: nn.Module, *, precision: Precision, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """``model``, loaded in ``dtype`` on ``device`` for ``precision``, with the fastest kernels that keep that
    precision's contract, in place."""
    if precision is Precision.INT8:
        quantize_linear_int8(model)
    if precision is not Precision.FP32:  # `--precision fp32` alone keeps Hugging Face's GELU
        fuse_tanh_gelu(model)
    if device.type == "cpu" and dtype == torch.bfloat16 and onednn_bf16():
        pack_linears(model)
    return model


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """``model`` with the linear layers of its encoder in int8 (torch's dynamic quantisation: weights int8
    per tensor, each pass's activations quantised on the fly), in place. The embeddings and the task head
    stay fp32: they are a small share of the work, and the head decides the label.

    torch marks this API and its quantised tensors deprecated in favour of torchao (not installed here); the
    warnings say nothing a run's user can act on and are silenced. torch is locked (``requirements.lock``), and
    the test suite runs this path, so a torch that drops it fails there first."""
    encoder = model.get_submodule("albert.encoder.albert_layer_groups")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        torch.ao.quantization.quantize_dynamic(encoder, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return model


# The op-by-op tanh GELUs: transformers' two, and `albert_batch.inference.albert.NewGELU`.
TANH_GELUS = frozenset({"NewGELUActivation", "FastGELUActivation", "NewGELU"})


def fuse_tanh_gelu(model: nn.Module) -> int:
    """Swap transformers' tanh-approximation GELU (ALBERT's ``gelu_new``), written as six elementwise
    torch ops, for torch's fused kernel of the same formula; return how many modules were swapped.

    Each of those ops is a pass over the feed-forward layer's largest tensor (in bf16 rounded to bf16 in
    between); the fused kernel makes one pass and computes in float32 inside: faster (the op-by-op GELU was
    18% of an fp32 forward pass's CPU time on an AVX2 CPU), and no further from fp32. For every precision but
    ``--precision fp32``, whose results must match Hugging Face's pipelines, which use the op-by-op formula.
    Takes transformers' models (benchmarks compare with them) and `albert_batch.inference.albert`'s, and
    imports neither."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child).__name__ in TANH_GELUS:
                setattr(parent, name, nn.GELU(approximate="tanh"))
                swapped += 1
    return swapped


def onednn_bf16() -> bool:
    """True where `pack_linears` applies: torch has oneDNN, and the CPU has bf16 instructions (AMX or
    AVX-512-BF16; elsewhere bf16 is emulated, and ``auto`` runs fp32)."""
    return torch.backends.mkldnn.is_available() and cpu_has_native_bf16()


class PackedLinear(nn.Module):
    """A linear layer as a oneDNN product whose weight is laid out once, for oneDNN's kernels, instead of
    at every call; ``activation`` (oneDNN's name: ``"gelu"`` with ``algorithm="tanh"``) is applied inside
    the product, on its float32 accumulators, before they are rounded to the output's dtype. Without an
    activation its results equal `torch.nn.Linear`'s in bf16 to the bit (`tests/test_albert.py`). It keeps
    only the laid-out weight: a model with such layers is for inference, and its ``state_dict`` lacks them."""

    def __init__(self, linear: nn.Linear, activation: str = "none", algorithm: str = "") -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.activation, self.algorithm = activation, algorithm
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.packed_weight, self.bias,
                                                 self.activation, [], self.algorithm)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        activation = f", activation={self.activation}({self.algorithm})" if self.activation != "none" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}{activation}"


def pack_linears(model: nn.Module) -> int:
    """Swap the linear layers of ``model``'s encoder (a bf16 ALBERT: transformers' or
    `albert_batch.inference.albert`'s) for `PackedLinear`s, in place; where a layer's ``activation`` is the
    fused tanh GELU (`fuse_tanh_gelu`), it moves into its ``ffn`` product. Returns how many linear layers
    were swapped.

    In bf16 the tanh GELU was a pass over the feed-forward's largest tensor after its product, 8% of a
    forward pass's CPU time at the base shape, and re-laying a weight out at every product cost oneDNN
    2-12% of it (BENCHMARKS.md)."""
    swapped = 0
    for parent in list(model.get_submodule("albert.encoder").modules()):
        gelu = getattr(parent, "activation", None)
        if (type(getattr(parent, "ffn", None)) is nn.Linear and type(gelu) is nn.GELU
                and gelu.approximate == "tanh"):
            parent.ffn, parent.activation = PackedLinear(parent.ffn, "gelu", "tanh"), nn.Identity()
            swapped += 1
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child))
                swapped += 1
    return swapped
