"""Hugging Face checkpoint directories: config.json plus model.safetensors, sharded
safetensors with model.safetensors.index.json, or pytorch_model.bin (optionally sharded
with its index), read with torch.load(weights_only=True).

Loading checks the weights' names and shapes against config.json before the model is
built (from the safetensors headers, which costs no tensor reads), so a config that does
not fit its weights fails in one message instead of allocating the config's model first.
Whatever is wrong with the directory (missing, unreadable or corrupt files, a config that
does not fit) raises mpt_ext.errors.UsageError naming the file, in one line.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import UsageError, one_line
from .config import MPTConfig

__all__ = ["load_pretrained", "save_pretrained", "load_state_dict_checked", "CheckpointNotFound"]


class CheckpointNotFound(UsageError, FileNotFoundError):
    """A checkpoint dir, its config.json or its weight files do not exist."""

CONFIG_NAME = "config.json"
SAFE_NAME = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
# Every weight file name save_pretrained may write (stale ones are removed first).
_WEIGHT_FILE = re.compile(r"^(model(-\d{5}-of-\d{5})?\.safetensors|pytorch_model(-\d{5}-of-\d{5})?"
                          r"\.bin)(\.index\.json)?$")
_MAX_LISTED = 20
_MAX_WHY = 300  # characters of an underlying error quoted in a UsageError


def _read_json(file: Path) -> object:
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UsageError(f"{file}: not valid JSON ({e})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{file}: cannot read it ({one_line(e, limit=_MAX_WHY)})") from e


def _weight_files(path: Path) -> tuple[list[Path], bool]:
    """The weight files of a checkpoint dir and whether they are safetensors."""
    for index, safe in ((SAFE_INDEX, True), (BIN_INDEX, False)):
        if (path / index).is_file():
            index_json = _read_json(path / index)
            weight_map = index_json.get("weight_map") if isinstance(index_json, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str)
                                                           for v in weight_map.values()):
                raise UsageError(f"{path / index} has no 'weight_map' of tensor name -> file")
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (path / f).is_file()]
            if missing:
                raise CheckpointNotFound(f"{path / index} lists shard(s) that are missing: {missing}")
            return [path / f for f in files], safe
    if (path / SAFE_NAME).is_file():
        return [path / SAFE_NAME], True
    if (path / BIN_NAME).is_file():
        return [path / BIN_NAME], False
    raise CheckpointNotFound(f"no weights in {path}: expected {SAFE_NAME}, {SAFE_INDEX}, "
                             f"{BIN_NAME} or {BIN_INDEX}")


def _safetensors_shapes(files: list[Path]) -> dict:
    """name -> shape from the safetensors headers (no tensor data is read)."""
    from safetensors import SafetensorError, safe_open  # noqa: PLC0415
    shapes: dict = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as h:
                part = {k: tuple(h.get_slice(k).get_shape()) for k in h.keys()}
        except (SafetensorError, OSError) as e:
            raise UsageError(f"{f}: not a readable safetensors file "
                             f"({one_line(e, limit=_MAX_WHY)})") from e
        _merge(shapes, part)
    return shapes


def _merge(state: dict, part: dict) -> None:
    dup = set(part) & set(state)
    if dup:
        raise UsageError(f"tensor(s) stored twice in the checkpoint: {sorted(dup)[:_MAX_LISTED]}")
    state.update(part)


def _read_weights(files: list[Path], safe: bool, device: torch.device) -> dict:
    state: dict = {}
    for f in files:
        if safe:
            from safetensors import SafetensorError  # noqa: PLC0415
            from safetensors.torch import load_file  # noqa: PLC0415
            try:
                part = load_file(str(f), device=str(device))
            except (SafetensorError, OSError) as e:
                raise UsageError(f"{f}: not a readable safetensors file "
                                 f"({one_line(e, limit=_MAX_WHY)})") from e
        else:
            try:
                part = torch.load(f, map_location=device, weights_only=True)
            except (pickle.UnpicklingError, EOFError, RuntimeError, OSError) as e:
                raise UsageError(f"{f}: not a readable PyTorch weights file "
                                 f"({one_line(e, limit=_MAX_WHY)})") from e
            if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor)
                                                     for v in part.values()):
                raise UsageError(f"{f}: expected a state dict (tensor name -> tensor), got "
                                 f"{type(part).__name__}")
        _merge(state, part)
    return state


def _listing(names, total: Optional[int] = None) -> str:
    names = sorted(names)[:_MAX_LISTED]
    total = len(names) if total is None else total
    more = f" ... and {total - len(names)} more" if total > len(names) else ""
    return ", ".join(names) + more


_BLOCK_KEY = re.compile(r"^transformer\.blocks\.(0|[1-9]\d*)\.(.+)$")


def _expected_shapes(cls, config: MPTConfig) -> tuple[dict, dict]:
    """(name -> shape outside the blocks, block-relative name -> shape), from a one-block
    model on the meta device: the config's own model is never built for the check."""
    one = cls(dataclasses.replace(config, n_layers=1), device="meta")
    top, block = {}, {}
    for k, v in one.state_dict().items():
        m = _BLOCK_KEY.match(k)
        (block if m else top)[m.group(2) if m else k] = tuple(v.shape)
    return top, block


def check_shapes(cls, config: MPTConfig, shapes: dict, where: str = "checkpoint") -> None:
    """Raises UsageError listing every missing key, unexpected key and shape mismatch of
    shapes (name -> shape) against config's model, without building that model."""
    shapes = dict(shapes)
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)  # transformers' state_dict lists the tied head too
    top, block = _expected_shapes(cls, config)
    n_layers = config.n_layers
    unexpected, mismatched, present_block_keys, blocks_seen = [], [], 0, set()
    for k, shape in shapes.items():
        m = _BLOCK_KEY.match(k)
        if m:
            blocks_seen.add(int(m.group(1)))
        if m and int(m.group(1)) < n_layers and m.group(2) in block:
            expected = block[m.group(2)]
            present_block_keys += 1
        elif k in top:
            expected = top[k]
        else:
            unexpected.append(k)
            continue
        if tuple(shape) != expected:
            mismatched.append(f"{k}: checkpoint {tuple(shape)} vs model {expected}")
    missing = [k for k in top if k not in shapes]
    n_missing = len(missing) + n_layers * len(block) - present_block_keys
    for i in range(n_layers):  # the first few missing block keys (n_layers may be huge)
        if len(missing) >= _MAX_LISTED or len(missing) == n_missing:
            break
        missing += [f"transformer.blocks.{i}.{b}" for b in block
                    if f"transformer.blocks.{i}.{b}" not in shapes]
    problems = []
    if blocks_seen and len(blocks_seen) != n_layers:
        problems.append(f"config.json has n_layers={n_layers}, the weights hold "
                        f"{len(blocks_seen)} blocks")
    if n_missing:
        problems.append(f"missing keys ({n_missing}): {_listing(missing, n_missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_listing(mismatched)}")
    if problems:
        raise UsageError(f"{where} does not match the MPT config: " + "; ".join(problems))


def load_state_dict_checked(model: torch.nn.Module, state: dict, assign: bool = False) -> None:
    """load_state_dict that first reports every missing key, unexpected key and shape
    mismatch in one UsageError. A tied lm_head.weight stored beside wte is accepted."""
    check_shapes(type(model), model.config, {k: tuple(v.shape) for k, v in state.items()})
    _load_checked_state(model, state, assign)


def _load_checked_state(model: torch.nn.Module, state: dict, assign: bool) -> None:
    """load_state_dict(strict=True) of a state whose shapes check_shapes has passed; a tied
    lm_head.weight stored beside wte is dropped (transformers' state_dict lists it too)."""
    if getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" in state:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
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
    config_file = path / CONFIG_NAME
    if not path.is_dir():
        raise CheckpointNotFound(f"checkpoint dir {path} " + ("is a file, not a directory"
                                 if path.exists() else "does not exist"))
    if not config_file.is_file():
        raise CheckpointNotFound(f"{path} has no {CONFIG_NAME}: not a Hugging Face model dir")
    config_dict = _read_json(config_file)
    try:
        config = MPTConfig.from_dict(config_dict)
    except (ValueError, TypeError) as e:  # the file's values: the user's to fix
        raise UsageError(f"{config_file}: {one_line(e, limit=_MAX_WHY)}") from e
    device = torch.device(device if device is not None else "cpu")
    files, safe = _weight_files(path)
    if safe:  # the headers first: a mismatch fails before any tensor is read
        check_shapes(cls, config, _safetensors_shapes(files), f"checkpoint {path}")
    state = _read_weights(files, safe, device)
    if not safe:
        check_shapes(cls, config, {k: tuple(v.shape) for k, v in state.items()},
                     f"checkpoint {path}")
    if dtype is None:
        wte = state.get("transformer.wte.weight")
        dtype = wte.dtype if wte is not None else _dtype_from_config(config_dict) or torch.float32
    # Mixed-precision checkpoints (e.g. fp32 norms) become one dtype: the kernels want that.
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model = cls(config, device="meta")
    _load_checked_state(model, state, assign=True)  # check_shapes above passed these keys
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
    # safetensors writes through a 0600 temporary file: give the weights the mode that
    # config.json got from a plain open() (0666 less the umask), as a shared model dir needs.
    mode = (path / CONFIG_NAME).stat().st_mode & 0o777
    for name, shard in zip(names, shards):
        if safe_serialization:
            from safetensors.torch import save_file  # noqa: PLC0415
            save_file(shard, str(path / name), metadata={"format": "pt"})
        else:
            torch.save(shard, path / name)
        os.chmod(path / name, mode)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size()
                                                for t in state.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        with open(path / (SAFE_INDEX if safe_serialization else BIN_INDEX), "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
