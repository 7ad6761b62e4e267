"""CPU-only speed code, kept apart so that models/capsnet.py reads as the paper: the C++ routing
kernels (csrc/, built by `python -m models.cpu.build`, loaded by `kernels`) and the PrimaryCaps
convolution through a small DFT (`dft_conv`). Every path here has a plain-PyTorch twin that CUDA,
other dtypes and machines without a compiler run instead. In studies, the bench and `studies
train`, each runs only where it gains at least 1.3x over that twin on the step it speeds up,
measured on the CPU at hand (models/speed_paths.py, studies/training/speed_choice.py); a bare
`train()` call without a plan follows each path's batch-size rule.
"""
