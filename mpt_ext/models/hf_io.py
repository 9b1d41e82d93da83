"""Hugging Face checkpoint directories: config.json plus model.safetensors, sharded
safetensors with model.safetensors.index.json, or pytorch_model.bin (optionally sharded
with its index), read with torch.load(weights_only=True)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional, Union

import torch

from .config import MPTConfig

__all__ = ["load_pretrained", "save_pretrained", "load_state_dict_checked"]

CONFIG_NAME = "config.json"
SAFE_NAME = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
# Every weight file name save_pretrained may write (stale ones are removed first).
_WEIGHT_FILE = re.compile(r"^(model(-\d{5}-of-\d{5})?\.safetensors|pytorch_model(-\d{5}-of-\d{5})?"
                          r"\.bin)(\.index\.json)?$")
_MAX_LISTED = 20


def _weight_files(path: Path) -> tuple[list[Path], bool]:
    """The weight files of a checkpoint dir and whether they are safetensors."""
    for index, safe in ((SAFE_INDEX, True), (BIN_INDEX, False)):
        if (path / index).is_file():
            with open(path / index) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{path / index} has no 'weight_map'")
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (path / f).is_file()]
            if missing:
                raise FileNotFoundError(f"{path / index} lists shard(s) that are missing: {missing}")
            return [path / f for f in files], safe
    if (path / SAFE_NAME).is_file():
        return [path / SAFE_NAME], True
    if (path / BIN_NAME).is_file():
        return [path / BIN_NAME], False
    raise FileNotFoundError(f"no weights in {path}: expected {SAFE_NAME}, {SAFE_INDEX}, "
                            f"{BIN_NAME} or {BIN_INDEX}")


def _read_weights(files: list[Path], safe: bool, device: torch.device) -> dict:
    state: dict = {}
    for f in files:
        if safe:
            from safetensors.torch import load_file  # noqa: PLC0415
            part = load_file(str(f), device=str(device))
        else:
            part = torch.load(f, map_location=device, weights_only=True)
        dup = set(part) & set(state)
        if dup:
            raise ValueError(f"tensor(s) stored twice in the checkpoint: {sorted(dup)[:_MAX_LISTED]}")
        state.update(part)
    return state


def _listing(names) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def load_state_dict_checked(model: torch.nn.Module, state: dict, assign: bool = False) -> None:
    """load_state_dict that first reports every missing key, unexpected key and shape
    mismatch in one ValueError. A tied lm_head.weight stored beside wte is accepted."""
    expected = model.state_dict()
    state = dict(state)
    if getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" in state:
        del state["lm_head.weight"]  # transformers' state_dict lists the tied head too
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(state) & set(expected))
              if tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): " + "; ".join(shapes[:_MAX_LISTED]))
    if problems:
        raise ValueError("checkpoint does not match the MPT config:\n  " + "\n  ".join(problems))
    model.load_state_dict(state, strict=True, assign=assign)


def _dtype_from_config(d: dict) -> Optional[torch.dtype]:
    name = d.get("dtype") or d.get("torch_dtype")
    if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return None


def load_pretrained(cls, path: Union[str, os.PathLike], dtype: Optional[torch.dtype] = None,
                    device=None):
    """A model (in eval mode, like transformers') from a Hugging Face MPT checkpoint dir.
    dtype: None keeps the checkpoint's floating dtype (its wte's)."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_NAME}")
    with open(path / CONFIG_NAME) as f:
        config_dict = json.load(f)
    config = MPTConfig.from_dict(config_dict)
    device = torch.device(device if device is not None else "cpu")
    files, safe = _weight_files(path)
    state = _read_weights(files, safe, device)
    if dtype is None:
        wte = state.get("transformer.wte.weight")
        dtype = wte.dtype if wte is not None else _dtype_from_config(config_dict) or torch.float32
    # Mixed-precision checkpoints (e.g. fp32 norms) become one dtype: the kernels want that.
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model = cls(config, device="meta")
    load_state_dict_checked(model, state, assign=True)
    return model.eval()


def _shard_bytes(max_shard_size) -> Optional[int]:
    if max_shard_size is None or isinstance(max_shard_size, int):
        return max_shard_size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)\s*", str(max_shard_size), re.I)
    if not m:
        raise ValueError(f"max_shard_size must be an int (bytes) or like '5GB', got "
                         f"{max_shard_size!r}")
    unit = m.group(2).upper()
    base = 1024 if "I" in unit else 1000
    return int(float(m.group(1)) * base ** "KMG".index(unit[0]) * base)


def _shards(state: dict, limit: Optional[int]) -> list[dict]:
    """Greedy split in key order; a tensor larger than the limit gets a shard of its own."""
    if limit is None:
        return [state]
    shards, current, size = [], {}, 0
    for k, t in state.items():
        n = t.numel() * t.element_size()
        if current and size + n > limit:
            shards.append(current)
            current, size = {}, 0
        current[k] = t
        size += n
    shards.append(current)
    return shards


def save_pretrained(model, path: Union[str, os.PathLike], safe_serialization: bool = True,
                    max_shard_size=None) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for old in path.iterdir():  # a stale shard or index would make the dir ambiguous
        if old.is_file() and _WEIGHT_FILE.match(old.name):
            old.unlink()
    dtype_name = str(model.dtype).removeprefix("torch.")
    config = model.config.to_dict()
    config["dtype"] = dtype_name
    with open(path / CONFIG_NAME, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    shards = _shards(state, _shard_bytes(max_shard_size))
    stem, ext = ("model", "safetensors") if safe_serialization else ("pytorch_model", "bin")
    names = ([f"{stem}.{ext}"] if len(shards) == 1 else
             [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}" for i in range(len(shards))])
    for name, shard in zip(names, shards):
        if safe_serialization:
            from safetensors.torch import save_file  # noqa: PLC0415
            save_file(shard, str(path / name), metadata={"format": "pt"})
        else:
            torch.save(shard, path / name)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size()
                                                for t in state.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        with open(path / (SAFE_INDEX if safe_serialization else BIN_INDEX), "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
