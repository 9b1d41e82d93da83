"""Small calls of every CUDA op, for compute-sanitizer (scripts/gpu-check): odd sizes so
that tile edges, masks and GQA are all exercised, forward and backward."""
import itertools
import os

import torch

import mpt_ext

dev = "cuda"
torch.manual_seed(0)


def attention_cases():
    for dtype in (torch.bfloat16, torch.float16):
        for (b, sq, sk, h, hk, d) in [(2, 17, 113, 6, 2, 64), (1, 113, 17, 4, 4, 128),
                                      (1, 1, 65, 3, 1, 256), (2, 33, 33, 2, 1, 40)]:
            q = torch.randn(b, sq, h, d, device=dev, dtype=dtype, requires_grad=True)
            k = torch.randn(b, sk, hk, d, device=dev, dtype=dtype, requires_grad=True)
            v = torch.randn(b, sk, hk, d, device=dev, dtype=dtype, requires_grad=True)
            # trainable slopes: the backward's separate dQ kernel; frozen: the atomic dQ (the
            # default; MPT_EXT_ATTN_BWD_DQ is unset here)
            for slopes_grad, (causal, window) in itertools.product(
                    (True, False), ((True, (-1, -1)), (False, (8, 3)))):
                slopes = mpt_ext.alibi_slopes(h, device=dev).requires_grad_(slopes_grad)
                out = mpt_ext.flash_attn_func(q, k, v, causal=causal, window_size=window,
                                              alibi_slopes=slopes, softcap=0.0)
                out.float().square().sum().backward()
            # the other score kinds (csrc/attn/cuda/seq_score.cuh): no slopes, softcap
            for kw in (dict(), dict(softcap=20.0, alibi_slopes=mpt_ext.alibi_slopes(h, device=dev))):
                out = mpt_ext.flash_attn_func(q, k, v, causal=True, **kw)
                out.float().square().sum().backward()
        # the other tiles (MPT_EXT_ATTN_FWD_TILE, MPT_EXT_ATTN_BWD_TILE) where the head-dim
        # bucket has them; backward tiles with the atomic (frozen slopes) and separate dQ
        for variable, listing in (("MPT_EXT_ATTN_FWD_TILE", mpt_ext._library.ATTN_FWD_TILES),
                                  ("MPT_EXT_ATTN_BWD_TILE", mpt_ext._library.ATTN_BWD_TILES)):
            for bucket, tiles in listing.items():
                for tile in tiles[1:]:
                    os.environ[variable] = tile
                    q = torch.randn(1, 200, 4, bucket, device=dev, dtype=dtype,
                                    requires_grad=True)
                    kv = torch.randn(1, 150, 2, bucket, device=dev, dtype=dtype,
                                     requires_grad=True)
                    for slopes_grad, causal, window in ((False, True, (-1, -1)),
                                                        (True, False, (40, 7))):
                        slopes = mpt_ext.alibi_slopes(4, device=dev).requires_grad_(slopes_grad)
                        out = mpt_ext.flash_attn_func(q, kv, kv, causal=causal,
                                                      window_size=window, alibi_slopes=slopes)
                        out.float().square().sum().backward()
                    del os.environ[variable]
        # the sm_90a forward (MPT_EXT_ATTN_FWD_KERNEL=sm90) on an sm_90 GPU: each bucket, the
        # stage ring wrapping, a block past the rows, empty blocks, every score kind
        if torch.cuda.get_device_capability() == (9, 0):
            os.environ["MPT_EXT_ATTN_FWD_KERNEL"] = "sm90"
            for d, (sq, sk), causal in ((64, (130, 520), False), (128, (300, 40), True),
                                        (96, (17, 300), True), (40, (129, 129), False)):
                q = torch.randn(2, sq, 4, d, device=dev, dtype=dtype)
                kv = torch.randn(2, sk, 2, d, device=dev, dtype=dtype)
                for kw in (dict(), dict(alibi_slopes=mpt_ext.alibi_slopes(4, device=dev)),
                           dict(softcap=20.0, window_size=(50, 7))):
                    mpt_ext.flash_attn_func(q, kv, kv, causal=causal, **kw)
            del os.environ["MPT_EXT_ATTN_FWD_KERNEL"]
        # varlen with an empty sequence
        cu = torch.tensor([0, 5, 5, 40], device=dev, dtype=torch.int32)
        q = torch.randn(40, 4, 64, device=dev, dtype=dtype, requires_grad=True)
        kv = torch.randn(40, 2, 64, device=dev, dtype=dtype, requires_grad=True)
        out = mpt_ext.flash_attn_varlen_func(q, kv, kv, cu, cu, 35, 35, causal=True,
                                             alibi_slopes=mpt_ext.alibi_slopes(4, device=dev))
        out.float().sum().backward()
        # varlen with paged keys (block_table): pages of 128 in reverse order, one sequence
        # spanning three pages, an empty one, a short one
        pages = torch.randn(8, 128, 2, 64, device=dev, dtype=dtype)
        table = torch.arange(8, device=dev, dtype=torch.int32).flip(0).view(2, 4)
        table = torch.cat([table, table[:1]])  # the third shares the first's pages
        cu_kp = torch.tensor([0, 300, 300, 317], device=dev, dtype=torch.int32)
        mpt_ext.flash_attn_varlen_func(q, pages, pages.clone(), cu, cu_kp, 35, 300, causal=True,
                                       alibi_slopes=mpt_ext.alibi_slopes(4, device=dev),
                                       block_table=table)
        # the split dQ (deterministic=True's five-matmul form) over several launches: 1100 keys
        # in 16-block launches, batched and varlen (a long sequence, a short one, an empty one)
        os.environ["MPT_EXT_ATTN_BWD_DQ"] = "split"
        q = torch.randn(1, 37, 4, 128, device=dev, dtype=dtype, requires_grad=True)
        kv = torch.randn(1, 1100, 2, 128, device=dev, dtype=dtype, requires_grad=True)
        out = mpt_ext.flash_attn_func(q, kv, kv, causal=True, deterministic=True,
                                      alibi_slopes=mpt_ext.alibi_slopes(4, device=dev))
        out.float().sum().backward()
        cu_q = torch.tensor([0, 20, 27, 27], device=dev, dtype=torch.int32)
        cu_k = torch.tensor([0, 1100, 1130, 1130], device=dev, dtype=torch.int32)
        q = torch.randn(27, 4, 64, device=dev, dtype=dtype, requires_grad=True)
        kv = torch.randn(1130, 2, 64, device=dev, dtype=dtype, requires_grad=True)
        out = mpt_ext.flash_attn_varlen_func(q, kv, kv, cu_q, cu_k, 20, 1100, deterministic=True,
                                             alibi_slopes=mpt_ext.alibi_slopes(4, device=dev))
        out.float().sum().backward()
        del os.environ["MPT_EXT_ATTN_BWD_DQ"]


def decode_cases():
    for dtype in (torch.bfloat16, torch.float16):
        b, h, hk, d, cache = 3, 8, 2, 128, 300
        kc = torch.randn(b, cache, hk, d, device=dev, dtype=dtype)
        vc = torch.randn_like(kc)
        seqlens = torch.tensor([0, 17, 290], device=dev, dtype=torch.int32)
        for sq in (1, 4):
            q = torch.randn(b, sq, h, d, device=dev, dtype=dtype)
            kn = torch.randn(b, sq, hk, d, device=dev, dtype=dtype)
            for splits in (0, 1, 3):
                mpt_ext.flash_attn_with_kvcache(q, kc, vc, kn, kn, cache_seqlens=seqlens,
                                                causal=True, num_splits=splits,
                                                alibi_slopes=mpt_ext.alibi_slopes(h, device=dev))
            # paged, left-padded, rotary: pages of 16 in reverse order, a 64-dim rotation
            pages = torch.randn(b * 19, 16, hk, d, device=dev, dtype=dtype)
            table = torch.arange(b * 19, device=dev, dtype=torch.int32).flip(0).view(b, 19)
            angle = torch.rand(b * 19 * 16 + sq, 32, device=dev)
            mpt_ext.flash_attn_with_kvcache(
                q, pages, pages.clone(), kn, kn, angle.cos().to(dtype), angle.sin().to(dtype),
                seqlens, None, torch.tensor([0, 5, 100], device=dev, dtype=torch.int32), table,
                causal=True, rotary_interleaved=False,
                alibi_slopes=mpt_ext.alibi_slopes(h, device=dev))


def norm_cases():
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for hidden in (1, 7, 769, 4096, 5000):
            x = torch.randn(37, hidden, device=dev, dtype=dtype, requires_grad=True)
            r = torch.randn_like(x, requires_grad=True)
            w = torch.randn(hidden, device=dev, requires_grad=True)
            bias = torch.randn(hidden, device=dev, requires_grad=True)
            y, s = mpt_ext.layer_norm(x, w, bias, residual=r)
            (y.float().sum() + s.float().sum()).backward()
            mpt_ext.rms_norm(x, w).float().sum().backward()


for name, fn in (("norm", norm_cases), ("attention", attention_cases), ("decode", decode_cases)):
    try:
        fn()
        torch.cuda.synchronize()
        print(f"{name}: ok")
    except NotImplementedError as e:
        print(f"{name}: not built ({e})")
