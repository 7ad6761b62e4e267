"""CPU-only speed code, kept apart so that models/capsnet.py reads as the paper: the C++ routing
kernels (csrc/, built by `python -m models.cpu.build`, loaded by `kernels`) and the PrimaryCaps
convolution through a small DFT (`dft_conv`). Every path here has a plain-PyTorch twin that CUDA,
other dtypes and machines without a compiler run instead, and each must gain at least 1.3x over
that twin on the step it speeds up: `python -m bench.speed_paths` measures them.
"""
