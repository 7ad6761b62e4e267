"""`python -m models.build_kernels`: build the CPU routing kernel now (`make setup` does) and
say which routing sweeps this machine runs. Never fails: without a compiler routing falls back
to PyTorch ops, as the message says."""
from models import routing_sweeps

if __name__ == "__main__":
    if routing_sweeps.version("cpu") == "cpp":
        print(f"routing sweeps: C++ kernel ready ({' '.join(routing_sweeps.compile_flags())})")
    else:
        print(f"routing sweeps: PyTorch ops ({routing_sweeps.kernel_error()})")
