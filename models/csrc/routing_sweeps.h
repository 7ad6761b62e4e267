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
#include <cmath>
#include <map>
#include <mutex>
#include <vector>

#include "tensor_checks.h"

namespace capsbench {

// Per-chunk partial sums of a sweep, added up in the order of the chunks (not of the threads
// finishing), so a result is the same from run to run at any thread count.
class ChunkSums {
 public:
  explicit ChunkSums(int64_t size) : size_(size) {}

  std::vector<float>& open(int64_t chunk_start) {
    std::lock_guard<std::mutex> guard(lock_);
    return parts_.emplace(chunk_start, std::vector<float>(size_, 0.f)).first->second;
  }

  void add_into(float* total) const {
    for (const auto& part : parts_)
      for (int64_t k = 0; k < size_; ++k) total[k] += part.second[k];
  }

 private:
  int64_t size_;
  std::mutex lock_;
  std::map<int64_t, std::vector<float>> parts_;
};

inline void check_sweep_shapes(const at::Tensor& votes, int64_t parents) {
  TORCH_CHECK(votes.dim() == 3 && parents > 0 && votes.size(2) % parents == 0,
              "votes must be (children, dim, parents * batch)");
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
  ChunkSums sums(dim * width);
  at::parallel_for(0, children, 1, [&](int64_t begin, int64_t end) {
    std::vector<float>& partial = sums.open(begin);
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
      for (int64_t j = 0; j < parents; ++j)
        for (int64_t b = 0; b < batch; ++b) {
          const float e = std::exp(li[j * batch + b] - peak[b]);
          ci[j * batch + b] = e;
          total[b] += e;
        }
      for (int64_t b = 0; b < batch; ++b) total[b] = 1.f / total[b];
      for (int64_t j = 0; j < parents; ++j)
        for (int64_t b = 0; b < batch; ++b) ci[j * batch + b] *= total[b];
      for (int64_t d = 0; d < dim; ++d) {
        const float* row = slab + d * width;
        float* pd = partial.data() + d * width;
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
  ChunkSums sums(dim * width);
  at::parallel_for(0, children, 1, [&](int64_t begin, int64_t end) {
    std::vector<float>& partial = sums.open(begin);
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
        float* pd = partial.data() + d * width;
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
