// The forward tile a run asks for: MPT_EXT_ATTN_FWD_TILE=ROWSxKEYS (query rows per CTA x keys
// per K/V tile, e.g. 128x32) picks one of a head-dim bucket's variants (attn_fwd_launch.cuh)
// for A/B runs; unset or empty: the bucket's default. Read at every call, so that a benchmark
// can switch it between runs in one process.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace mpt_ext::attn::cuda {

constexpr const char* kFwdTileVariable = "MPT_EXT_ATTN_FWD_TILE";

struct FwdTile {
  int rows = 0;  // 0: not asked for
  int keys = 0;

  constexpr bool operator==(const FwdTile& o) const { return rows == o.rows && keys == o.keys; }
  std::string name() const { return std::to_string(rows) + "x" + std::to_string(keys); }
};

inline FwdTile requested_fwd_tile() {
  const char* value = std::getenv(kFwdTileVariable);
  if (value == nullptr || value[0] == '\0') return {};
  FwdTile t;
  char tail = 0;
  if (std::sscanf(value, "%dx%d%c", &t.rows, &t.keys, &tail) != 2 || t.rows <= 0 ||
      t.keys <= 0) {
    throw std::invalid_argument(std::string(kFwdTileVariable) +
                                ": expected ROWSxKEYS such as 128x32, got '" + value + "'");
  }
  return t;
}

}  // namespace mpt_ext::attn::cuda
