"""The device axis of the op tests: one test body, run with a "cpu" and a "cuda" param.

The "cuda" param carries pytest.mark.cuda (conftest.py skips it without a GPU) and a skip
when this build does not dispatch the CUDA kernels of the op's family. This is the only
module that reads the build's dispatch flags: when they change, change them here.
"""
import pytest
import torch

from mpt_ext import _library

# kernel family (as -DMPT_EXT_CUDA_OPS names it) -> are its CUDA kernels dispatched to:
# norm (layer_norm, rms_norm), attn (flash_attn_func / _varlen_func, forward and backward),
# attn_kvcache (flash_attn_with_kvcache)
_DISPATCHED = {family: family in _library.CUDA_FAMILIES
               for family in ("norm", "attn", "attn_kvcache")}

_SHORT = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16",
          torch.float16: "fp16"}


def _cuda_marks(family):
    """pytest.mark.cuda, and a skip unless the build dispatches family's CUDA kernels."""
    return [pytest.mark.cuda,
            pytest.mark.skipif(not _DISPATCHED[family],
                               reason=f"CUDA {family} kernels not dispatched "
                                      f"(build with -DMPT_EXT_CUDA_OPS={family})")]


def devices(family, cpu=((),), cuda=((),), cpu_marks=()):
    """The device params of a test of family's ops: "cpu" and "cuda" for a test run the same
    way on both; with cpu and cuda given, for a test whose grid differs by device (the GPU
    runs larger sizes, low precision dtypes only...): ("cpu", *case) for each case in cpu
    and ("cuda", *case) for each in cuda, a case being the tuple of the values of the
    parameters after "device". cpu_marks go on the cpu params only (slow, say)."""
    def param(device, case, marks):
        case = tuple(case)
        return pytest.param(device, *case, marks=marks,
                            id="-".join([device] + [_SHORT.get(v, str(v)) for v in case]))
    return ([param("cpu", case, list(cpu_marks)) for case in cpu] +
            [param("cuda", case, _cuda_marks(family)) for case in cuda])


def cuda_only(family):
    """Decorator for a test that only makes sense on the GPU (a CUDA kernel's own paths, a
    comparison of the CUDA kernel with the CPU kernel...)."""
    def mark(test):
        for m in _cuda_marks(family):
            test = m(test)
        return test
    return mark


def cuda_undispatched(family):
    """Decorator for a test of what a CUDA tensor gets when family's CUDA kernels are not
    dispatched (needs a GPU and a build without them)."""
    def mark(test):
        test = pytest.mark.skipif(
            _DISPATCHED[family], reason=f"CUDA {family} kernels are dispatched in this build")(test)
        return pytest.mark.cuda(test)
    return mark
