"""Drop-in norm modules on mpt_ext's kernels.

Same constructors and state_dicts as torch.nn.LayerNorm / torch.nn.RMSNorm, but the output
keeps the input dtype (statistics in fp32), which is what MPT's low-precision LayerNorm is.
"""
from __future__ import annotations

import torch

from .norm import layer_norm, rms_norm

__all__ = ["LayerNorm", "LPLayerNorm", "RMSNorm", "patch"]


def _flatten_normalized(x: torch.Tensor, normalized_shape: tuple[int, ...]) -> torch.Tensor:
    """Views (..., *normalized_shape) as (..., prod(normalized_shape))."""
    n = len(normalized_shape)
    if x.dim() < n or tuple(x.shape[x.dim() - n:]) != tuple(normalized_shape):
        raise ValueError(f"input of shape {tuple(x.shape)} does not end in normalized_shape "
                         f"{tuple(normalized_shape)}")
    return x if n == 1 else x.reshape(*x.shape[:x.dim() - n], -1)


def _flat(p):
    return p.reshape(-1) if p is not None else None


class LayerNorm(torch.nn.LayerNorm):
    """torch.nn.LayerNorm computed by mpt_ext's kernel, in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = layer_norm(_flatten_normalized(x, self.normalized_shape), _flat(self.weight),
                       _flat(self.bias), self.eps)
        return y.view(shape)


def _autocast_dtype(device_type: str):
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


class LPLayerNorm(torch.nn.LayerNorm):
    """llm-foundry's LPLayerNorm: under autocast, input and parameters are cast to the
    autocast dtype and the norm runs there (no fp32 copy of the activations)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _autocast_dtype(x.device.type)
        weight, bias = _flat(self.weight), _flat(self.bias)
        if dtype is not None:
            x = x.to(dtype)
            weight = weight.to(dtype) if weight is not None else None
            bias = bias.to(dtype) if bias is not None else None
        shape = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = layer_norm(_flatten_normalized(x, self.normalized_shape), weight, bias, self.eps)
        return y.view(shape)


class RMSNorm(torch.nn.RMSNorm):
    """torch.nn.RMSNorm computed by mpt_ext's kernel, in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        shape = x.shape
        y = rms_norm(_flatten_normalized(x, self.normalized_shape), _flat(self.weight), eps)
        return y.view(shape)


# torch module type -> mpt_ext subclass with the same __init__ and parameters.
_SWAPS = {torch.nn.LayerNorm: LayerNorm, torch.nn.RMSNorm: RMSNorm}


def patch(model: torch.nn.Module) -> torch.nn.Module:
    """Swaps, in place, every torch.nn.LayerNorm / torch.nn.RMSNorm in model (and the
    attention of Hugging Face MPT models) for mpt_ext's. Returns model; state_dict keys
    and values are unchanged."""
    # Changing the class of each instance keeps its parameters, buffers, hooks and identity,
    # so state_dict, optimizer state and references held elsewhere stay valid. Only exact
    # torch types are swapped: a user subclass may have its own forward.
    for module in model.modules():
        new_class = _SWAPS.get(type(module))
        if new_class is not None:
            module.__class__ = new_class
    from . import patching  # noqa: PLC0415  (model-specific swaps, e.g. HF MPT attention)
    patching.patch_attention(model)
    return model
