"""CPU-only speed code, kept apart so that models/capsnet.py reads as the paper: the C++ kernels
(csrc/, built by `python -m models.cpu.build`, loaded by `kernels`), the PrimaryCaps convolution
through a small DFT (`dft_conv`), buffers kept between steps (`workspace`) and glibc's malloc
thresholds (`allocator`, set by the entry points). Every path here has a plain-PyTorch twin that
CUDA, other dtypes and machines without a compiler run instead.
"""
