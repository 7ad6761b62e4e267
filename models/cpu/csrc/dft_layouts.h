// The polyphase layouts of models/dft_conv.py, for float32 on the CPU (the PyTorch version is a
// pad, a 6-D permute and a copy, whose inner loops run over 5 or 10 elements at stride 2).
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "tensor_checks.h"

namespace capsbench {

// x (rows, side, side) -> (rows * 4, n * n): row r * 4 + p * 2 + q holds x[r, 2m + p, 2k + q]
// at m * n + k, zero where 2m + p or 2k + q falls outside the side.
inline at::Tensor split_phases(const at::Tensor& x, int64_t n) {
  check(x, "x");
  TORCH_CHECK(x.dim() == 3 && x.size(1) == x.size(2) && 2 * n >= x.size(1), "split_phases: bad shape");
  const int64_t rows = x.size(0), side = x.size(1);
  at::Tensor out = at::empty({rows * 4, n * n}, x.options());
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* image = src + r * side * side;
      for (int64_t p = 0; p < 2; ++p)
        for (int64_t q = 0; q < 2; ++q) {
          float* phase = dst + (r * 4 + p * 2 + q) * n * n;
          for (int64_t m = 0; m < n; ++m) {
            const int64_t y = 2 * m + p;
            for (int64_t k = 0; k < n; ++k) {
              const int64_t x_ = 2 * k + q;
              phase[m * n + k] = (y < side && x_ < side) ? image[y * side + x_] : 0.f;
            }
          }
        }
    }
  });
  return out;
}

// The adjoint's layout: g (rows * 4, n * n) -> (rows, side, side), the inverse of split_phases
// on the positions inside the side.
inline at::Tensor merge_phases(const at::Tensor& g, int64_t side) {
  check(g, "g");
  TORCH_CHECK(g.dim() == 2 && g.size(0) % 4 == 0, "merge_phases: bad shape");
  const int64_t rows = g.size(0) / 4, area = g.size(1);
  int64_t n = 0;
  while (n * n < area) ++n;
  TORCH_CHECK(n * n == area && 2 * n >= side, "merge_phases: bad shape");
  at::Tensor out = at::empty({rows, side, side}, g.options());
  const float* src = g.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* image = dst + r * side * side;
      const float* phases = src + r * 4 * area;
      for (int64_t y = 0; y < side; ++y) {
        const float* row_phases = phases + (y % 2) * 2 * area + (y / 2) * n;
        for (int64_t x_ = 0; x_ < side; ++x_) image[y * side + x_] = row_phases[(x_ % 2) * area + x_ / 2];
      }
    }
  });
  return out;
}

}  // namespace capsbench
