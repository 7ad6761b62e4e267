// The sweeps of dynamic routing over the vote tensor, for float32 on the CPU
// (models/routing_sweeps.py calls them and falls back to PyTorch ops without them).
//
// votes: (children, dim, width) with width = parents * batch, column w = j * batch + b.
// Each sweep reads a child's (dim x width) slab once from memory and does all of its work on
// it while it sits in the core's cache; the PyTorch version needs four passes with temporaries.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tensor_checks.h"

namespace capsbench {

// The children of a sweep are cut into chunks of a fixed size, each summed in child order into a
// partial sum of its own, and the partial sums are added up in chunk order. at::parallel_for's
// chunk boundaries depend on the thread count, so summing per parallel_for range would give a
// result that depends on it; fixed chunks make the same inputs give bit-identical results at any
// thread count (tests/test_routing_sweeps.py). 32 children per chunk: CapsNet's 1152 children make
// 36 chunks, enough to keep 16 threads busy; measured against per-range sums in one process
// (batch 64, 2 threads, paired rounds), the sweeps and the vote product took 0.99-1.00x the time.
constexpr int64_t kChunkChildren = 32;

class ChunkSums {
 public:
  ChunkSums(int64_t children, int64_t size)
      : children_(children), size_(size), parts_(chunks() * size, 0.f) {}

  int64_t chunks() const { return (children_ + kChunkChildren - 1) / kChunkChildren; }

  // body(partial sum of the chunk, first child, end child), for every chunk, in parallel.
  template <typename Body>
  void for_each_chunk(const Body& body) {
    at::parallel_for(0, chunks(), 1, [&](int64_t first_chunk, int64_t end_chunk) {
      for (int64_t chunk = first_chunk; chunk < end_chunk; ++chunk) {
        const int64_t begin = chunk * kChunkChildren;
        body(parts_.data() + chunk * size_, begin, std::min(children_, begin + kChunkChildren));
      }
    });
  }

  void add_into(float* total) const {
    for (int64_t chunk = 0; chunk < chunks(); ++chunk) {
      const float* part = parts_.data() + chunk * size_;
      for (int64_t k = 0; k < size_; ++k) total[k] += part[k];
    }
  }

 private:
  int64_t children_, size_;
  std::vector<float> parts_;
};

// exp(x) for x <= 0, as the softmax needs after subtracting the peak logit. glibc's expf is a
// call per element that GCC does not vectorise, and it was half of a forward sweep's time; this
// one is a loop body GCC vectorises (with -fno-trapping-math, for the clamp). Range reduction
// x = n ln2 + r with ln2 split in two parts, then a degree-7 polynomial for e^r on |r| <= ln2 / 2
// (the Cephes expf coefficients), then 2^n from the exponent bits: within 1.02 ulp of the exact
// value for every float in [-87, 0] (checked exhaustively against double-precision exp). Below
// -87, where e^x leaves float32's normal range, it returns 0 (no subnormal couplings, which
// would slow every product with them).
inline float exp_nonpositive(float x) {
  const float clamped = std::max(x, -87.0f);  // keeps the exponent bits below in range
  const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (clamped - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float power = __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);  // C++17 too
  const float e = (p * r * r + r + 1.0f) * power;
  return x >= -87.0f ? e : 0.0f;
}

inline void check_sweep_shapes(const at::Tensor& votes, int64_t parents) {
  TORCH_CHECK(votes.dim() == 3 && parents > 0 && votes.size(2) % parents == 0,
              "votes must be (children, dim, parents * batch)");
}

// votes[i] = W_i u_i for every child i (W_i: rows x inner, u_i: inner x batch), returning their
// sum over the children, which the first routing iteration needs (its couplings are uniform).
// The sum is taken while a child's votes are still in cache: after a batched GEMM it was a
// second pass over all of them. With the sum it measured about as fast as MKL's bmm alone at
// these sizes (inner = 8): each output row is `inner` multiply-adds over a contiguous batch row.
inline at::Tensor votes_and_sum(const at::Tensor& weight_t, const at::Tensor& u_t, at::Tensor& votes) {
  check(weight_t, "weight_t");
  check(u_t, "u_t");
  check(votes, "votes");
  TORCH_CHECK(weight_t.dim() == 3 && u_t.dim() == 3 && weight_t.size(0) == u_t.size(0) &&
                  weight_t.size(2) == u_t.size(1),
              "votes_and_sum: weight_t must be (children, rows, inner) and u_t (children, inner, batch)");
  const int64_t children = weight_t.size(0), rows = weight_t.size(1), inner = weight_t.size(2);
  const int64_t batch = u_t.size(2);
  TORCH_CHECK(votes.numel() == children * rows * batch, "votes_and_sum: votes must hold children * rows * batch");
  const float* wp = weight_t.data_ptr<float>();
  const float* up = u_t.data_ptr<float>();
  float* op = votes.data_ptr<float>();
  at::Tensor total = at::zeros({rows, batch}, votes.options());
  ChunkSums sums(children, rows * batch);
  constexpr int64_t tile = 64;  // batch columns per accumulator: 8 AVX2 registers
  sums.for_each_chunk([&](float* partial, int64_t begin, int64_t end) {
    float acc[tile];
    for (int64_t i = begin; i < end; ++i) {
      const float* ui = up + i * inner * batch;
      for (int64_t r = 0; r < rows; ++r) {
        const float* w_row = wp + (i * rows + r) * inner;
        float* out_row = op + (i * rows + r) * batch;
        float* sum_row = partial + r * batch;
        for (int64_t b0 = 0; b0 < batch; b0 += tile) {
          const int64_t width = std::min(tile, batch - b0);
          std::fill(acc, acc + width, 0.f);
          for (int64_t q = 0; q < inner; ++q) {
            const float w = w_row[q];
            const float* uq = ui + q * batch + b0;
            for (int64_t b = 0; b < width; ++b) acc[b] += w * uq[b];
          }
          for (int64_t b = 0; b < width; ++b) {
            out_row[b0 + b] = acc[b];
            sum_row[b0 + b] += acc[b];
          }
        }
      }
    }
  });
  sums.add_into(total.data_ptr<float>());
  return total;
}

// logits += <u_hat_i, v> over dim; coupling = softmax over the parents; returns s = sum_i c_i u_hat_i.
inline at::Tensor forward_sweep(const at::Tensor& votes, const at::Tensor& v, at::Tensor& logits,
                         at::Tensor& coupling, int64_t parents) {
  check(votes, "votes");
  check(v, "v");
  check(logits, "logits");
  check(coupling, "coupling");
  check_sweep_shapes(votes, parents);
  const int64_t children = votes.size(0), dim = votes.size(1), width = votes.size(2);
  const int64_t batch = width / parents;
  TORCH_CHECK(v.numel() == dim * width && logits.numel() == children * width && coupling.numel() == children * width,
              "forward_sweep: inconsistent shapes");
  const float* u = votes.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* lp = logits.data_ptr<float>();
  float* cp = coupling.data_ptr<float>();
  at::Tensor s = at::zeros({dim, width}, votes.options());
  ChunkSums sums(children, dim * width);
  sums.for_each_chunk([&](float* partial, int64_t begin, int64_t end) {
    std::vector<float> agreement(width), peak(batch), total(batch);
    for (int64_t i = begin; i < end; ++i) {
      const float* slab = u + i * dim * width;
      float* li = lp + i * width;
      float* ci = cp + i * width;
      std::fill(agreement.begin(), agreement.end(), 0.f);
      for (int64_t d = 0; d < dim; ++d) {
        const float* row = slab + d * width;
        const float* vd = vp + d * width;
        for (int64_t w = 0; w < width; ++w) agreement[w] += row[w] * vd[w];
      }
      for (int64_t w = 0; w < width; ++w) li[w] += agreement[w];
      std::copy(li, li + batch, peak.begin());
      for (int64_t j = 1; j < parents; ++j)
        for (int64_t b = 0; b < batch; ++b) peak[b] = std::max(peak[b], li[j * batch + b]);
      std::fill(total.begin(), total.end(), 0.f);
      for (int64_t j = 0; j < parents; ++j) {
        const float* lij = li + j * batch;
        float* cij = ci + j * batch;
        for (int64_t b = 0; b < batch; ++b) cij[b] = exp_nonpositive(lij[b] - peak[b]);
        for (int64_t b = 0; b < batch; ++b) total[b] += cij[b];
      }
      for (int64_t b = 0; b < batch; ++b) total[b] = 1.f / total[b];
      for (int64_t j = 0; j < parents; ++j)
        for (int64_t b = 0; b < batch; ++b) ci[j * batch + b] *= total[b];
      for (int64_t d = 0; d < dim; ++d) {
        const float* row = slab + d * width;
        float* pd = partial + d * width;
        for (int64_t w = 0; w < width; ++w) pd[w] += row[w] * ci[w];
      }
    }
  });
  sums.add_into(s.data_ptr<float>());
  return s;
}

// The adjoint of one forward sweep: grad_c = <u_hat_i, grad_s>; grad_logits += the softmax
// backward of grad_c; returns grad_v_prev = sum_i grad_logits_i u_hat_i.
inline at::Tensor backward_sweep(const at::Tensor& votes, const at::Tensor& coupling, const at::Tensor& grad_s,
                          at::Tensor& grad_logits, int64_t parents) {
  check(votes, "votes");
  check(coupling, "coupling");
  check(grad_s, "grad_s");
  check(grad_logits, "grad_logits");
  check_sweep_shapes(votes, parents);
  const int64_t children = votes.size(0), dim = votes.size(1), width = votes.size(2);
  const int64_t batch = width / parents;
  TORCH_CHECK(grad_s.numel() == dim * width && coupling.numel() == children * width &&
                  grad_logits.numel() == children * width,
              "backward_sweep: inconsistent shapes");
  const float* u = votes.data_ptr<float>();
  const float* cp = coupling.data_ptr<float>();
  const float* gp = grad_s.data_ptr<float>();
  float* glp = grad_logits.data_ptr<float>();
  at::Tensor grad_v = at::zeros({dim, width}, votes.options());
  ChunkSums sums(children, dim * width);
  sums.for_each_chunk([&](float* partial, int64_t begin, int64_t end) {
    std::vector<float> grad_c(width), weighted(batch);
    for (int64_t i = begin; i < end; ++i) {
      const float* slab = u + i * dim * width;
      const float* ci = cp + i * width;
      float* gli = glp + i * width;
      std::fill(grad_c.begin(), grad_c.end(), 0.f);
      for (int64_t d = 0; d < dim; ++d) {
        const float* row = slab + d * width;
        const float* gd = gp + d * width;
        for (int64_t w = 0; w < width; ++w) grad_c[w] += row[w] * gd[w];
      }
      std::fill(weighted.begin(), weighted.end(), 0.f);
      for (int64_t j = 0; j < parents; ++j)
        for (int64_t b = 0; b < batch; ++b) weighted[b] += ci[j * batch + b] * grad_c[j * batch + b];
      for (int64_t j = 0; j < parents; ++j)
        for (int64_t b = 0; b < batch; ++b) {
          const int64_t w = j * batch + b;
          gli[w] += ci[w] * (grad_c[w] - weighted[b]);
        }
      for (int64_t d = 0; d < dim; ++d) {
        const float* row = slab + d * width;
        float* pd = partial + d * width;
        for (int64_t w = 0; w < width; ++w) pd[w] += row[w] * gli[w];
      }
    }
  });
  sums.add_into(grad_v.data_ptr<float>());
  return grad_v;
}

// Rows [start, start + n) of the gradient of u_hat from its rank-one factors (written to out,
// (n, dim, width)): out[i, d, w] = shared[d, w] + sum over k of f[k][start + i, w] * g[k][d, w].
// `shared` carries the factors whose f is the same for every child (the uniform first coupling).
inline void votes_grad_rows(const std::vector<at::Tensor>& f, const std::vector<at::Tensor>& g, const at::Tensor& shared,
                     int64_t start, at::Tensor& out) {
  check(shared, "shared");
  check(out, "out");
  TORCH_CHECK(f.size() == g.size() && out.dim() == 3 && start >= 0, "votes_grad_rows: bad arguments");
  const int64_t rows = out.size(0), dim = out.size(1), width = out.size(2);
  TORCH_CHECK(shared.numel() == dim * width, "votes_grad_rows: inconsistent shapes");
  std::vector<const float*> fp, gp;
  for (size_t k = 0; k < f.size(); ++k) {
    check(f[k], "f");
    check(g[k], "g");
    TORCH_CHECK(f[k].numel() >= (start + rows) * width && g[k].numel() == dim * width,
                "votes_grad_rows: inconsistent shapes");
    fp.push_back(f[k].data_ptr<float>() + start * width);
    gp.push_back(g[k].data_ptr<float>());
  }
  const float* sp = shared.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t d = 0; d < dim; ++d) {
        float* o = op + (i * dim + d) * width;
        std::copy(sp + d * width, sp + (d + 1) * width, o);
        for (size_t k = 0; k < fp.size(); ++k) {
          const float* fi = fp[k] + i * width;
          const float* gd = gp[k] + d * width;
          for (int64_t w = 0; w < width; ++w) o[w] += fi[w] * gd[w];
        }
      }
  });
}

}  // namespace capsbench
