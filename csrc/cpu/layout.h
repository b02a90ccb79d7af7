// How the C++ CPU kernels read an (N, C, *) tensor in place: "rows" (contiguous NCHW, each
// (n, c) a run of S values) or "channels" (channels_last and (N, C): each of the N*S rows
// holds C channels). Any other layout is copied to contiguous first.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>

namespace fusedgan {
namespace {

using at::Tensor;

constexpr int64_t kRowBlocks = 64;     // fixed row blocks of the channels layout
constexpr int64_t kMinBlockRows = 64;  // rows a block of channel_stats_rows holds at least

struct Layout {
  Tensor t;  // the tensor in the chosen layout (a copy only if it was in neither)
  bool channels_fast;
  int64_t N, C, S;
};

at::MemoryFormat channels_last_format(const Tensor& x) {
  return x.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast;
}

Layout layout_of(const Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1), S = C ? x.numel() / std::max<int64_t>(N * C, 1) : 0;
  const bool cl = (x.dim() == 4 || x.dim() == 5) && x.is_contiguous(channels_last_format(x));
  if (x.is_contiguous() && (S == 1 || x.dim() == 2)) return {x, true, N, C, S};
  if (cl && !x.is_contiguous()) return {x, true, N, C, S};
  return {x.contiguous(), false, N, C, S};
}

// `t` in the layout of `like` (dy and dx follow x).
Tensor in_layout(const Tensor& t, const Layout& like) {
  if (!like.channels_fast || like.S == 1 || t.dim() == 2) return t.contiguous();
  return t.contiguous(channels_last_format(t));
}

}  // namespace
}  // namespace fusedgan
