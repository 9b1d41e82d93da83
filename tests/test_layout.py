"""The tree's structure holds: generated instantiations are current, every op has a kernel (or a
clear refusal) registered per device, and every path the code and docs point at exists
(docs/ARCHITECTURE.md is the map)."""
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mpt_ext  # noqa: F401  (registers torch.ops.mpt_ext)

ROOT = Path(__file__).resolve().parent.parent
OPS = ("attn_fwd", "attn_bwd", "attn_kvcache", "norm_fwd", "norm_bwd")


def test_generated_instantiations_are_current():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-instantiations"), "--check"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("key", ["CPU", "CUDA"])
def test_every_op_is_registered_per_device(op, key):
    # CUDA: the kernels when the family is enabled, else a NotImplementedError that names it
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mpt_ext::{op}", key)


def test_the_ops_are_the_documented_ones():
    schemas = (ROOT / "python" / "torch_bindings.cpp").read_text()
    assert tuple(re.findall(r'^\s*"(\w+)\(', schemas, re.M)) == OPS
    arch = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for op in OPS:
        assert f"`{op}`" in arch, f"docs/ARCHITECTURE.md does not name {op}"


# ---- no dead pointers ---------------------------------------------------------------------
_TOP = ("csrc", "python", "mpt_ext", "tests", "scripts", "docs", ".ci")
_PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./{},*-]*[\w}*])" % "|".join(map(re.escape, _TOP)))
# ../name.h in csrc/ (an include, a comment, a README): relative to the citing file's folder
_RELATIVE = re.compile(r"(?<![\w./-])((?:\.\./)+[\w./-]*\.(?:h|cuh|cu|cpp|md|py|cmake))")
_TEXT = (".py", ".cpp", ".h", ".cu", ".cuh", ".md", ".cmake", ".txt", ".toml")
# Written at run time, not in the repository.
_GENERATED = ("mpt_ext/_C", "docs/benchmarks")


def _expand(path):
    """{a,b} alternatives, as a shell expands them."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return list(itertools.chain.from_iterable(
        _expand(path[:m.start()] + alt + path[m.end():]) for alt in m.group(1).split(",")))


def _tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith(_TEXT) or n.startswith("scripts/")]


def _cited_paths():
    """(file, line, path relative to the repository root) for every path a file cites."""
    for f in _tracked_text_files():
        if not f.exists() or "fixtures" in f.parts:
            continue
        for line_no, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for cited in _PATH.findall(line):
                cited = cited.rstrip(".,")
                if not cited.startswith(_GENERATED):
                    yield f, line_no, cited
            for cited in _RELATIVE.findall(line) if f.is_relative_to(ROOT / "csrc") else ():
                path = (f.parent / cited).resolve()
                yield f, line_no, str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else cited


def test_every_cited_path_exists():
    if not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout")
    dead = []
    for f, line_no, cited in _cited_paths():
        for path in _expand(cited):
            if not any(ROOT.glob(path)) and not (ROOT / path).exists():
                dead.append(f"{f.relative_to(ROOT)}:{line_no}: {path}")
    assert not dead, "paths cited but missing:\n" + "\n".join(sorted(set(dead)))


def test_design_citations_point_into_the_repository():
    # the contract lives in docs/DESIGN.md; a bare "DESIGN.md" would point outside the tree
    if not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout")
    bare = [f"{f.relative_to(ROOT)}:{n}" for f in _tracked_text_files() if f.exists()
            for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1)
            if re.search(r"(?<![\w/])DESIGN\.md", line) and f.name != "test_layout.py"]
    assert not bare, "cite docs/DESIGN.md, not DESIGN.md:\n" + "\n".join(bare)


def test_launch_checks_have_one_definition():
    # csrc/common/cuda_host.h's check_launch honours MPT_EXT_CUDA_SYNC; a family with a
    # private copy would silently ignore that debugging switch
    private = [str(f.relative_to(ROOT)) for f in (ROOT / "csrc").rglob("*")
               if f.suffix in (".cu", ".cuh", ".h") and f.parent.name != "common"
               and re.search(r"cudaGetLastError|void check_launch\(|ceil_div\(int64_t",
                             f.read_text())]
    assert not private, f"CUDA host helpers belong in csrc/common/: {private}"


def test_every_launch_can_run_on_the_emulated_gpu():
    # tests/cuda_emulation runs the launchers on the CPU: a launch written as <<<...>>> or
    # cudaLaunchKernel, or dynamic shared memory declared as extern __shared__, would not compile
    # there (the one of each lives in cuda_host.h's launch_kernel and ptx.cuh's dynamic_smem;
    # the Hopper kernels' 1024-byte aligned one in sm90/ptx_sm90.cuh's dynamic_smem_1024)
    allowed = {"csrc/common/cuda_host.h": "<<<", "csrc/attn/cuda/ptx.cuh": "extern __shared__",
               "csrc/attn/cuda/sm90/ptx_sm90.cuh": "extern __shared__"}
    found = [f"{rel}: {pat}" for f in (ROOT / "csrc").rglob("*")
             if f.suffix in (".cu", ".cuh", ".h")
             for rel in [str(f.relative_to(ROOT))]
             for pat in ("<<<", "cudaLaunchKernel", "extern __shared__")
             if pat in f.read_text() and allowed.get(rel) != pat]
    assert not found, f"launch through launch_kernel, shared memory through dynamic_smem: {found}"
