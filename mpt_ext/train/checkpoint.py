"""Atomic training checkpoints and Hugging Face export.

A checkpoint is a directory runs/<name>/step-00000300/ with state.pt (one torch.save of
model, optimizer, scheduler, sampler, RNG states, step and config) and meta.json (format,
step, byte size and sha256 of state.pt). It is written under a temporary name, fsynced,
renamed into place and the parent directory fsynced: a crash at any point leaves either
the complete new checkpoint or none, and the previous ones untouched. Loading checks
size and hash before unpickling, so a damaged file gives a clear error, not garbage.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

from ..errors import UsageError

FORMAT = "mpt_ext.train/1"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(UsageError):
    """A checkpoint is missing, corrupt, or does not fit this run (or a run dir already
    holds another run): mpt-train prints it as a one-line error."""


class _HashingFile:
    """File wrapper that hashes what torch.save writes, so saving reads nothing back."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in run_dir, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted((p for p in run_dir.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)),
                  key=lambda p: p.name)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: str | os.PathLike, step: int, state: dict, keep_last: int) -> Path:
    """Writes state as checkpoint `step` atomically, then keeps only the newest keep_last."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:08d}"
    tmp = run_dir / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        with open(tmp / "state.pt", "wb") as f:
            hf = _HashingFile(f)
            torch.save({"format": FORMAT, **state}, hf)
            f.flush()
            os.fsync(f.fileno())
        meta = {"format": FORMAT, "step": step, "bytes": hf.size, "sha256": hf.sha.hexdigest()}
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. resumed then stopped at once)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in run_dir.glob(".tmp-step-*"):  # left by a crashed earlier process
        shutil.rmtree(stale, ignore_errors=True)
    return final


def resolve_checkpoint(spec: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """'latest' -> the newest checkpoint in run_dir; otherwise a checkpoint directory."""
    if str(spec) == "latest":
        found = latest_checkpoint(run_dir)
        if found is None:
            raise CheckpointError(f"--resume latest: no checkpoint in {run_dir}")
        return found
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"--resume {spec}: not a checkpoint directory")
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Reads and verifies a checkpoint; raises CheckpointError saying what is wrong."""
    path = Path(path)
    meta_path, state_path = path / "meta.json", path / "state.pt"
    if not meta_path.is_file() or not state_path.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete (needs meta.json and state.pt)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: meta.json is corrupt ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: meta.json is corrupt (a JSON {type(meta).__name__}, "
                              "expected an object)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    size = state_path.stat().st_size
    if size != meta.get("bytes"):
        raise CheckpointError(f"checkpoint {path} is corrupt: state.pt has {size} bytes, "
                              f"meta.json says {meta.get('bytes')}")
    sha = hashlib.sha256()
    with open(state_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            sha.update(chunk)
    if sha.hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupt: state.pt does not match its sha256")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"checkpoint {path}: state.pt cannot be read ({e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path}: state.pt has format {found!r}")
    return state


def export_hf(model: torch.nn.Module, out_dir: str | os.PathLike, tokenizer=None) -> Path:
    """A Hugging Face format dir (config.json + weights) via the model's save_pretrained,
    written beside the target and renamed into place; the tokenizer's identity is recorded
    (and a Hugging Face tokenizer saved with it)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        hf = getattr(tokenizer, "_tok", None)
        if hf is not None:
            hf.save_pretrained(tmp)
        (tmp / "mpt_ext_tokenizer.json").write_text(json.dumps(
            {"name": tokenizer.name, "fingerprint": tokenizer.fingerprint,
             "vocab_size": tokenizer.vocab_size}, indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)
    return out_dir


def run_dir_contents(run_dir: str | os.PathLike) -> list[Path]:
    """What a run leaves in its dir (checkpoints, unfinished ones, metrics.jsonl): a fresh
    run there would mix with it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = list_checkpoints(run_dir) + sorted(run_dir.glob(".tmp-step-*"))
    if (run_dir / "metrics.jsonl").exists():
        found.append(run_dir / "metrics.jsonl")
    return found


def clear_run_dir(run_dir: str | os.PathLike) -> list[Path]:
    """Removes run_dir_contents(run_dir) (mpt-train --overwrite); other files stay."""
    found = run_dir_contents(run_dir)
    for p in found:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    return found
