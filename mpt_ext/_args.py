"""Argument type checks shared by the functional ops, each naming the argument: past them,
an op schema would say "Expected a value of type 'Optional[Tensor]' for argument ..." and
float() "could not convert string to float", naming nothing the user wrote."""
from __future__ import annotations

import numbers
import operator

import torch


def real(name: str, value) -> float:
    """value as a Python float: an int or float (not a bool), or a traced SymInt/SymFloat."""
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return float(value)
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    return float(value)


def integer(name: str, value, expected: str = "an int", *, allow_bool: bool = True,
            symint: bool = False):
    """value as a Python int via operator.index (ints, numpy ints, 0-d integer tensors);
    a bool only where allow_bool, and a traced SymInt returned as is where symint."""
    if symint and isinstance(value, torch.SymInt):  # traced (torch.compile, dynamic shapes)
        return value
    try:
        if isinstance(value, bool) and not allow_bool:
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}") from None


def tensor_arg(name: str, t, expected: str = "a torch.Tensor", optional: bool = True) -> None:
    """t is a torch.Tensor (or None where optional)."""
    if (t is None and optional) or isinstance(t, torch.Tensor):
        return
    raise TypeError(f"{name} must be {expected}{' or None' if optional else ''}, got {type(t).__name__}")
