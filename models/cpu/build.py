"""`python -m models.cpu.build`: build the C++ CPU kernels now (`make setup` does) and say
whether this machine runs them. Never fails: without a compiler routing and the DFT convolution
fall back to PyTorch ops, as the message says."""
from models.cpu import kernels as cpu_kernels

if __name__ == "__main__":
    if cpu_kernels.module() is not None:
        print(f"C++ CPU kernels ready ({' '.join(cpu_kernels.compile_flags())})")
    else:
        print(f"C++ CPU kernels unavailable, PyTorch ops instead ({cpu_kernels.error()})")
