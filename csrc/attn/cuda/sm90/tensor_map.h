// Host side of TMA: a CUtensorMap (the 128-byte descriptor a cp.async.bulk.tensor names) for
// a tile of a strided tensor, made by the driver's cuTensorMapEncodeTiled. The driver entry
// point is looked up through the runtime once, so that the extension does not link libcuda.
// Under MPT_EXT_CUDA_EMULATION the emulator's encoder (same signature, same checks) makes it.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace mpt_ext::attn::cuda::sm90 {

using EncodeTiled = PFN_cuTensorMapEncodeTiled_v12000;

inline EncodeTiled encode_tiled() {
#ifdef MPT_EXT_CUDA_EMULATION
  return &cuda_emu::tensor_map_encode_tiled;
#else
  static const EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                           cudaEnableDefault, &found);
#else  // toolkits before 12.5 have only the unversioned lookup
    const cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault,
                                                  &found);
#endif
    if (e != cudaSuccess || found != cudaDriverEntryPointSuccess || f == nullptr) {
      throw std::runtime_error("mpt_ext: the CUDA driver has no cuTensorMapEncodeTiled (needs a "
                               "CUDA 12 driver)");
    }
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
#endif
}

// dims / box: elements, innermost first; row_strides: bytes of dimensions 1 .. rank - 1 (each a
// multiple of 16). Elements outside the tensor load as zero and are not stored.
inline CUtensorMap make_tensor_map(CUtensorMapDataType type, int rank, const void* base,
                                   const uint64_t* dims, const uint64_t* row_strides,
                                   const uint32_t* box, CUtensorMapSwizzle swizzle) {
  if (rank < 1 || rank > 5) {
    throw std::invalid_argument("mpt_ext: a tensor map has rank 1 .. 5, not " +
                                std::to_string(rank));
  }
  // encoded into a local, not into the return slot: the driver wants 64-byte alignment, and a
  // caller's temporary need not have it (g++ does not always honour CUtensorMap's alignas)
  alignas(128) CUtensorMap encoded;
  cuuint64_t d[5], s[4];
  cuuint32_t b[5], unit[5] = {1, 1, 1, 1, 1};
  for (int i = 0; i < rank; ++i) {
    d[i] = dims[i];
    b[i] = box[i];
    if (i + 1 < rank) s[i] = row_strides[i];
  }
  const CUresult r = encode_tiled()(&encoded, type, static_cast<cuuint32_t>(rank),
                                    const_cast<void*>(base), d, s, b, unit,
                                    CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    throw std::invalid_argument("mpt_ext: cuTensorMapEncodeTiled refused a rank-" +
                                std::to_string(rank) + " tensor map (CUresult " +
                                std::to_string(static_cast<int>(r)) + "): base, strides or box "
                                "break TMA's alignment rules");
  }
  CUtensorMap map;
  std::memcpy(&map, &encoded, sizeof map);
  return map;
}

}  // namespace mpt_ext::attn::cuda::sm90
