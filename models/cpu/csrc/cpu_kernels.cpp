// The project's CPU kernels, one extension module (models/cpu/kernels.py builds and loads it).
#include "routing_sweeps.h"

// The kernels touch no Python object: other Python threads may run meanwhile, as with ATen ops.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  const auto no_gil = py::call_guard<py::gil_scoped_release>();
  m.def("votes_and_sum", &capsbench::votes_and_sum, "the votes W_i u_i of every child, returning their sum", no_gil);
  m.def("forward_sweep", &capsbench::forward_sweep, "one forward routing iteration over the votes", no_gil);
  m.def("backward_sweep", &capsbench::backward_sweep, "the backward of one routing iteration", no_gil);
  m.def("votes_grad_rows", &capsbench::votes_grad_rows, "rows of the gradient of u_hat from its rank-one factors",
        no_gil);
}
