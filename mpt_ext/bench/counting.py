"""Work per call, counted exactly as docs/DESIGN.md's performance protocol counts it, so that
our numbers and the anchors' can be compared line by line."""
from __future__ import annotations

FWD = "fwd"
FWD_BWD = "fwd+bwd"
PASSES = (FWD, FWD_BWD)

# The FlashAttention convention: the backward is 2.5x the forward's matmul work.
ATTENTION_FWD_BWD_FACTOR = 3.5
# Norm traffic in passes over x: fwd reads x, writes y; bwd reads x and dy, writes dx.
# Weights and per-row statistics are negligible at the benchmarked row counts.
NORM_PASSES = {FWD: 2, FWD_BWD: 5}


def _check_pass(pass_: str) -> None:
    if pass_ not in PASSES:
        raise ValueError(f"pass_ must be one of {PASSES}, got {pass_!r}")


def attention_flops(batch: int, heads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
                    causal: bool, pass_: str = FWD) -> float:
    """Two matmuls (QK^T and PV) of 2*N*N*D FLOPs each per head; causal counts half
    (docs/DESIGN.md: forward 4*B*H*N*N*D/2; forward+backward 3.5x that)."""
    _check_pass(pass_)
    flops = 4.0 * batch * heads * seqlen_q * seqlen_k * head_dim
    if causal:
        flops /= 2
    return flops * (ATTENTION_FWD_BWD_FACTOR if pass_ == FWD_BWD else 1.0)


def norm_bytes(rows: int, hidden: int, element_size: int, pass_: str = FWD) -> float:
    """Bytes moved by LayerNorm/RMSNorm: 2 passes of x forward, 5 forward+backward."""
    _check_pass(pass_)
    return float(NORM_PASSES[pass_] * rows * hidden * element_size)


def decode_bytes(batch: int, heads_k: int, cache_len: int, head_dim: int,
                 element_size: int) -> float:
    """Bytes of K and V read by one decoding step: the whole cache, once (queries, outputs
    and slopes are negligible). With GQA only the heads_k KV heads are read."""
    return float(2 * batch * heads_k * cache_len * head_dim * element_size)


def copy_bytes(nbytes: int) -> float:
    """A device-to-device copy reads and writes every byte."""
    return 2.0 * nbytes


def matmul_flops(m: int, n: int, k: int) -> float:
    return 2.0 * m * n * k


def model_flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), llm-foundry's MPT count: 6 per
    parameter plus the attention score/value matmuls, 12 * layers * d_model * seq_len."""
    return 6.0 * n_params + 12.0 * n_layers * d_model * seq_len


def throughput(work: float, ms: float, unit: float) -> float:
    """work per millisecond scaled to `unit` per second (1e12 for TFLOP/s, 1e9 for GB/s)."""
    if not ms > 0:
        raise ValueError(f"ms must be > 0, got {ms!r}")
    return work / (ms * 1e-3) / unit


TFLOPS = ("TFLOP/s", 1e12)
GBPS = ("GB/s", 1e9)
TOKENS_PER_S = ("tokens/s", 1.0)
