// Kernel tiles a run can ask for by name, so that one GPU run A/B's them (mpt-bench): each
// head-dim bucket lists its tiles, default first, and an environment variable picks one per
// call (read at every call, so that a benchmark can switch it between runs in one process).
// A tile is named PER_CTAxPER_STEP: the rows a CTA owns x the rows it streams through per
// step. Forward (MPT_EXT_ATTN_FWD_TILE): query rows per CTA x keys per K/V tile, e.g. 128x32.
// Backward dK/dV (MPT_EXT_ATTN_BWD_TILE): keys per CTA x query rows per Q/dO tile.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace mpt_ext::attn::cuda {

// The variable, the form of its value (for errors) and the kernel it picks for.
struct TileVariable {
  const char* name;
  const char* form;
  const char* what;
};
constexpr TileVariable kFwdTileVariable{"MPT_EXT_ATTN_FWD_TILE", "ROWSxKEYS", "forward"};
constexpr TileVariable kBwdTileVariable{"MPT_EXT_ATTN_BWD_TILE", "KEYSxROWS", "backward"};

struct Tile {
  int per_cta = 0;
  int per_step = 0;

  constexpr bool operator==(const Tile& o) const {
    return per_cta == o.per_cta && per_step == o.per_step;
  }
  std::string name() const { return std::to_string(per_cta) + "x" + std::to_string(per_step); }
};

// A bucket's kernel configurations, default first; each names its tile by kTilePerCta and
// kTilePerStep.
template <typename... Cfgs>
struct TileList {};

template <typename Cfg>
constexpr Tile tile_of() {
  return {Cfg::kTilePerCta, Cfg::kTilePerStep};
}

template <typename... Cfgs>
std::string tile_names(TileList<Cfgs...>, const char* sep = ", ") {
  std::string names;
  ((names += (names.empty() ? "" : sep) + tile_of<Cfgs>().name()), ...);
  return names;
}

// The tile of `list` (head-dim bucket `bucket`) the variable asks for, its first when unset
// or empty. A value not of the form, or a tile the list lacks, is an error naming the
// variable (and the bucket's tiles).
template <typename Default, typename... Others>
Tile requested_tile(TileList<Default, Others...> list, int bucket, const TileVariable& var) {
  const char* value = std::getenv(var.name);
  if (value == nullptr || value[0] == '\0') return tile_of<Default>();
  Tile t;
  char tail = 0;
  if (std::sscanf(value, "%dx%d%c", &t.per_cta, &t.per_step, &tail) != 2 || t.per_cta <= 0 ||
      t.per_step <= 0) {
    throw std::invalid_argument(std::string(var.name) + ": expected " + var.form +
                                " such as 128x32, got '" + value + "'");
  }
  if (!((t == tile_of<Default>()) || ... || (t == tile_of<Others>()))) {
    throw std::invalid_argument(std::string(var.name) + "=" + t.name() + ": head-dim bucket " +
                                std::to_string(bucket) + " has the " + var.what + " tiles " +
                                tile_names(list));
  }
  return t;
}

// Calls launch(Cfg{}) for the configuration of `list` with the tile `tile` (one that
// requested_tile returned).
template <typename... Cfgs, typename Launch>
void launch_tile(TileList<Cfgs...>, Tile tile, Launch&& launch) {
  const bool found = ((tile == tile_of<Cfgs>() && (launch(Cfgs{}), true)) || ...);
  if (!found) throw std::logic_error("launch_tile: tile " + tile.name() + " not in the list");
}

}  // namespace mpt_ext::attn::cuda
