"""Argument type checks shared by the functional ops, each naming the argument: past them,
an op schema would say "Expected a value of type 'Optional[Tensor]' for argument ..." and
float() "could not convert string to float", naming nothing the user wrote."""
from __future__ import annotations

import numbers

import torch


def real(name: str, value) -> float:
    """value as a Python float: an int or float (not a bool), or a traced SymInt/SymFloat."""
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return float(value)
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    return float(value)


def tensor_arg(name: str, t, expected: str = "a torch.Tensor", optional: bool = True) -> None:
    """t is a torch.Tensor (or None where optional)."""
    if (t is None and optional) or isinstance(t, torch.Tensor):
        return
    raise TypeError(f"{name} must be {expected}{' or None' if optional else ''}, got {type(t).__name__}")
