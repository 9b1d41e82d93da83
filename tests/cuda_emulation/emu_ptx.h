// The device instructions the kernels use, emulated from the PTX ISA's own definitions (the
// section of the ISA each follows is named at its definition in emu_ptx.cpp), never from the
// kernels' wrappers (csrc/attn/cuda/ptx.cuh): a harness that copied the kernel's reading of
// a fragment table would share its mistakes.
//
// ptx.cuh calls these in place of its inline assembly when MPT_EXT_CUDA_EMULATION is defined;
// cuda_emulation.h maps the CUDA builtins (__shfl_xor_sync, exp2f under --use_fast_math, ...)
// onto them.
#pragma once

#include <cstdint>

namespace cuda_emu {

// ---- tensor cores and shared memory (sm_80) ------------------------------------------------
enum class MmaInput : uint32_t { kF16 = 1, kBF16 = 2 };

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 d, a, b, c (d may alias c).
void mma_m16n8k16_f32(MmaInput type, float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                      uint32_t b1, const float (&c)[4]);

// The tensor cores' arithmetic, shared by mma and wgmma: one 16-bit input of a register (high:
// bits 31:16) as an exact double, and one output element sum_k x[k] y[k] + c.
double tensor_core_input(MmaInput type, uint32_t reg, int high);
float tensor_core_dot16(const double (&x)[16], const double (&y)[16], float c);

// ldmatrix.sync.aligned.m8n8.x{count}{.trans}.shared.b16 {r[0..count)}, [row_addr].
void ldmatrix_m8n8_b16(int count, bool trans, uint32_t* r, const void* row_addr);

// cp.async.{ca,cg}.shared.global [dst], [src], cp_size, src_size (zero-fills past src_size).
void cp_async(void* smem_dst, const void* gmem_src, int cp_size, int src_size, bool cg);
void cp_async_commit_group();
void cp_async_wait_group(int n);
void cp_async_wait_all();

// ---- global-memory reduction (red) -------------------------------------------------------------
// red.global.add.f32 [addr], value: atomic, round to nearest even, subnormals flushed.
void red_global_add_f32(float* addr, float value);

// ---- warp shuffles (shfl.sync) --------------------------------------------------------------
enum class ShflMode { kBfly, kIdx, kUp, kDown };
// shfl.sync.{mode}.b32 d, a, b, c, membermask
uint32_t shfl_sync(ShflMode mode, unsigned membermask, uint32_t a, uint32_t b, uint32_t c);
void syncwarp(unsigned membermask);

// ---- approximate math, as --use_fast_math compiles it -------------------------------------
// Each returns the correctly rounded value moved by a deterministic, input-dependent error
// within the ISA's stated bound, so that a kernel is held to what the hardware guarantees.
float ex2_approx_ftz(float x);    // exp2f
float lg2_approx_ftz(float x);    // log2f
float rcp_approx_ftz(float x);    // rcp.approx (division itself stays IEEE: see README)
float rsqrt_approx_ftz(float x);  // rsqrtf
float tanh_approx(float x);       // tanhf

// ---- conversions (cvt.rn), written from IEEE round-to-nearest-even --------------------------
// Used by the harness self-test to hold the CUDA headers' host conversions to the ISA.
uint16_t cvt_rn_f16_f32(float x);
uint16_t cvt_rn_bf16_f32(float x);

}  // namespace cuda_emu
