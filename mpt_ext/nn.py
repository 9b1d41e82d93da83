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
    if len(normalized_shape) == 1:
        return x
    if tuple(x.shape[-len(normalized_shape):]) != tuple(normalized_shape):
        raise ValueError(f"input's trailing shape {tuple(x.shape)} does not end in "
                         f"normalized_shape {tuple(normalized_shape)}")
    return x.reshape(*x.shape[:-len(normalized_shape)], -1)


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


def _swap_norm(module: torch.nn.Module):
    """The mpt_ext replacement for a torch norm module, sharing its parameters, or None."""
    if type(module) is torch.nn.LayerNorm:
        new = LayerNorm.__new__(LayerNorm)
    elif type(module) is torch.nn.RMSNorm:
        new = RMSNorm.__new__(RMSNorm)
    else:
        return None
    # Same attributes, same Parameter objects: state_dict and optimizer state are unchanged.
    new.__dict__ = module.__dict__.copy()
    new._parameters = module._parameters
    new._buffers = module._buffers
    new._modules = module._modules
    return new


def patch(model: torch.nn.Module) -> torch.nn.Module:
    """Swaps, in place, every torch.nn.LayerNorm / torch.nn.RMSNorm in model (and the
    attention of Hugging Face MPT models) for mpt_ext's. Returns model; state_dict keys
    and values are unchanged."""
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            new = _swap_norm(child)
            if new is not None:
                parent._modules[name] = new
    from . import patching  # noqa: PLC0415  (model-specific swaps, e.g. HF MPT attention)
    patching.patch_attention(model)
    return model
