// Which head-dim buckets this build compiles. By default all of {64, 128, 256}; CMake's
// MPT_EXT_HEAD_DIMS (e.g. "128" or "64;128", also read from the environment) restricts the
// build for quick iteration by defining MPT_ATTN_HDIMS_RESTRICTED and MPT_ATTN_HDIM_<d>=1.
#pragma once

#ifndef MPT_ATTN_HDIMS_RESTRICTED
#define MPT_ATTN_HDIM_64 1
#define MPT_ATTN_HDIM_128 1
#define MPT_ATTN_HDIM_256 1
#endif
#ifndef MPT_ATTN_HDIM_64
#define MPT_ATTN_HDIM_64 0
#endif
#ifndef MPT_ATTN_HDIM_128
#define MPT_ATTN_HDIM_128 0
#endif
#ifndef MPT_ATTN_HDIM_256
#define MPT_ATTN_HDIM_256 0
#endif
