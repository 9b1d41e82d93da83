"""The CPU attention kernels are flash algorithms: extra memory grows linearly with the
sequence length, never with its square (issue 2: 32768 tokens, 4 heads, d 64, ALiBi,
causal, forward and backward).

Each case runs in a fresh subprocess and reports the growth of the peak RSS (ru_maxrss)
from just before the forward to the end of the backward; that growth contains the O(N)
outputs and gradients, and would contain any (N x N) score matrix."""
import json
import os
import subprocess
import sys

import pytest

MIB = 1 << 20

_CASE = r"""
import json, resource, sys, time
import torch
import mpt_ext

n, heads, d = int(sys.argv[1]), int(sys.argv[2]), 64
q, k, v = (torch.randn(1, n, heads, d, requires_grad=True) for _ in range(3))
slopes = mpt_ext.alibi_slopes(heads).requires_grad_()
dout = torch.randn(1, n, heads, d)
# Warm-up on a tiny problem: thread pools and lazy allocations are not the kernel's memory.
for _ in range(2):
    ws = [torch.randn(1, 8, heads, d, requires_grad=True) for _ in range(3)]
    wo = mpt_ext.flash_attn_func(*ws, causal=True, alibi_slopes=slopes)
    torch.autograd.grad(wo, ws + [slopes], torch.randn_like(wo))

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
out = mpt_ext.flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes)
t1 = time.perf_counter()
dq, dk, dv, dslopes = torch.autograd.grad(out, (q, k, v, slopes), dout)
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

# Spot check the last query rows (they see every key) against a float64 reference that
# materialises only those rows' scores.
rows = 8
qs, ks, vs = q[:, -rows:].detach().double(), k.detach().double(), v.detach().double()
s = torch.einsum("bihd,bjhd->bhij", qs, ks) * d ** -0.5
i = torch.arange(rows).view(-1, 1) + (n - rows)
j = torch.arange(n).view(1, -1)
s = s - slopes.detach().double().view(1, -1, 1, 1) * (i - j).abs()
s = s.masked_fill(j > i, float("-inf"))
ref = torch.einsum("bhij,bjhd->bihd", torch.softmax(s, -1), vs)
err = (out[:, -rows:].double() - ref).abs().max().item()
finite = all(bool(torch.isfinite(t).all()) for t in (out, dq, dk, dv, dslopes))
print(json.dumps({"growth": peak - base, "fwd_s": t1 - t0, "bwd_s": t2 - t1, "err": err,
                  "finite": finite}))
"""


def _run_case(n: int, heads: int, timeout: float) -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _CASE, str(n), str(heads)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"n={n} heads={heads}: peak RSS growth {result['growth'] / MIB:.1f} MiB, "
          f"forward {result['fwd_s']:.2f} s, backward {result['bwd_s']:.2f} s, "
          f"max err {result['err']:.2e}")
    assert result["finite"]
    assert result["err"] < 1e-4
    return result


def _score_matrix_bytes(n: int) -> int:
    return n * n * 4  # one fp32 (N x N) matrix, for a single head


def test_forward_backward_memory_is_far_below_a_score_matrix():
    n, heads = 4096, 2
    r = _run_case(n, heads, timeout=300)
    # Outputs and gradients are 2 MiB each here (~8 MiB measured in all); one head's
    # (N x N) fp32 scores would be 64 MiB.
    assert r["growth"] < _score_matrix_bytes(n) // 4, r


@pytest.mark.slow
def test_32k_tokens_alibi_causal_forward_backward_linear_memory():
    n, heads = 32768, 4
    small = _run_case(n // 2, heads, timeout=1800)
    big = _run_case(n, heads, timeout=3600)
    # 32k x 32k fp32 is 4 GiB per head; the O(N) tensors here are ~32 MiB each.
    assert big["growth"] < 1024 * MIB, big
    # Doubling N: linear memory roughly doubles the growth; quadratic would quadruple it.
    assert big["growth"] < 3 * max(small["growth"], 32 * MIB), (small, big)
