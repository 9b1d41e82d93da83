// Makes the shared library importable as mpt_ext._C. Importing it runs the static
// TORCH_LIBRARY registrations; the module itself carries only build facts.
#include <Python.h>

static struct PyModuleDef mpt_ext_module = {PyModuleDef_HEAD_INIT, "_C",
                                            "mpt_ext kernels (ops live in torch.ops.mpt_ext)", -1,
                                            nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&mpt_ext_module);
  if (m == nullptr) return nullptr;
#ifdef MPT_EXT_WITH_CUDA
  PyModule_AddIntConstant(m, "with_cuda", 1);
#else
  PyModule_AddIntConstant(m, "with_cuda", 0);
#endif
#ifdef MPT_EXT_HAS_CUDA_NORM
  PyModule_AddIntConstant(m, "cuda_norm", 1);
#else
  PyModule_AddIntConstant(m, "cuda_norm", 0);
#endif
#ifdef MPT_EXT_HAS_CUDA_ATTENTION
  PyModule_AddIntConstant(m, "cuda_attention", 1);
#else
  PyModule_AddIntConstant(m, "cuda_attention", 0);
#endif
#ifdef MPT_EXT_HAS_CUDA_DECODE
  PyModule_AddIntConstant(m, "cuda_decode", 1);
#else
  PyModule_AddIntConstant(m, "cuda_decode", 0);
#endif
  return m;
}
