#pragma once

#include <torch/extension.h>

namespace capsbench {

// The kernels read raw float pointers: anything else is a caller's bug, reported as such.
inline void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
}

}  // namespace capsbench
