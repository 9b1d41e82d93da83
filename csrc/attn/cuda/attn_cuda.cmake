# Head-dim buckets the CUDA attention kernels are compiled for (see hdims.cuh; one file per
# bucket in instantiations/, written by scripts/gen-instantiations).
# MPT_EXT_HEAD_DIMS="128" (or "64;128", commas also accepted; cache variable or environment)
# compiles only those buckets, for quick builds; empty compiles all of 64;128;256.
set(MPT_EXT_HEAD_DIMS "$ENV{MPT_EXT_HEAD_DIMS}" CACHE STRING
  "CUDA attention head-dim buckets to compile (subset of 64;128;256; empty: all)")
if(MPT_EXT_HEAD_DIMS)
  string(REPLACE "," ";" _mpt_hdims "${MPT_EXT_HEAD_DIMS}")
  set(_mpt_hdim_defs MPT_ATTN_HDIMS_RESTRICTED)
  foreach(_d ${_mpt_hdims})
    if(NOT _d MATCHES "^(64|128|256)$")
      message(FATAL_ERROR "mpt_ext: MPT_EXT_HEAD_DIMS entries must be 64, 128 or 256, got '${_d}'")
    endif()
    list(APPEND _mpt_hdim_defs MPT_ATTN_HDIM_${_d}=1)
  endforeach()
  target_compile_definitions(mpt_cuda_kernels PRIVATE ${_mpt_hdim_defs})
  message(STATUS "mpt_ext: CUDA attention head-dim buckets ${_mpt_hdims}")
endif()
