// Makes the shared library importable as mpt_ext._C. Importing it runs the static
// TORCH_LIBRARY registrations; the module itself carries only build facts: whether nvcc
// built the CUDA kernels, which CUDA kernel families are dispatched to, and the CUDA
// attention forward's tiles per head-dim bucket.
#include <Python.h>

#include <string>

#ifdef MPT_EXT_CUDA_ATTN
#include "../csrc/attn/attn.h"
#endif

// The families CMake's MPT_EXT_CUDA_OPS enabled (MPT_EXT_CUDA_<FAMILY>), space separated.
#ifdef MPT_EXT_CUDA_NORM
#define MPT_EXT_FAMILY_NORM "norm "
#else
#define MPT_EXT_FAMILY_NORM ""
#endif
#ifdef MPT_EXT_CUDA_ATTN
#define MPT_EXT_FAMILY_ATTN "attn "
#else
#define MPT_EXT_FAMILY_ATTN ""
#endif
#ifdef MPT_EXT_CUDA_ATTN_KVCACHE
#define MPT_EXT_FAMILY_ATTN_KVCACHE "attn_kvcache "
#else
#define MPT_EXT_FAMILY_ATTN_KVCACHE ""
#endif

static struct PyModuleDef mpt_ext_module = {PyModuleDef_HEAD_INIT, "_C",
                                            "mpt_ext kernels (ops live in torch.ops.mpt_ext)", -1,
                                            nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&mpt_ext_module);
  if (m == nullptr) return nullptr;
#ifdef MPT_EXT_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  const char* families = MPT_EXT_FAMILY_NORM MPT_EXT_FAMILY_ATTN MPT_EXT_FAMILY_ATTN_KVCACHE;
#ifdef MPT_EXT_CUDA_ATTN
  const std::string attn_fwd_tiles = mpt_ext::attn_fwd_tiles_cuda();
  const std::string attn_bwd_tiles = mpt_ext::attn_bwd_tiles_cuda();
#else
  const std::string attn_fwd_tiles, attn_bwd_tiles;
#endif
  if (PyModule_AddIntConstant(m, "with_cuda", with_cuda) != 0 ||
      PyModule_AddStringConstant(m, "cuda_families", families) != 0 ||
      PyModule_AddStringConstant(m, "attn_fwd_tiles", attn_fwd_tiles.c_str()) != 0 ||
      PyModule_AddStringConstant(m, "attn_bwd_tiles", attn_bwd_tiles.c_str()) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
