"""Loads the compiled extension; importing it registers the torch.ops.mpt_ext ops."""
import torch  # noqa: F401  (torch's libraries must be loaded before _C)

try:
    from . import _C
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "mpt_ext._C is not built: run `pip install --no-build-isolation -e .` "
        "(or scripts/dev-build) from the source tree"
    ) from e

ops = torch.ops.mpt_ext

#: the extension was compiled with nvcc (CUDA kernels present)
WITH_CUDA = bool(_C.with_cuda)
#: the CUDA LayerNorm / RMSNorm kernels are dispatched to
CUDA_NORM = bool(_C.cuda_norm)
#: the CUDA attention (forward/backward/varlen) kernels are built
CUDA_ATTENTION = bool(_C.cuda_attention)
#: the CUDA decode (flash_attn_with_kvcache) kernel is built
CUDA_DECODE = bool(_C.cuda_decode)
