"""The PrimaryCaps convolution (9x9, stride 2) computed through a small DFT: the same function
as `F.conv2d(h, w, b, stride=2)`, float rounding aside, with a third of the arithmetic.

Why: on the CPU this one convolution is most of a CapsNet training step, and oneDNN's backward
for it costs several times its forward. Whether it pays depends on the CPU and the batch (the
weight transform is a fixed cost per step, and a forward alone gains nothing): the speed plan
chooses it where a measurement on the CPU at hand says so (models/speed_paths.py), and
bench/README.md keeps what `python -m bench.speed_paths` measured where it was written. The price
is memory: the weight spectra (about 109 MB for CapsNet) are kept for the backward.

The maths. A stride-2 correlation splits into its four polyphase parts: with the phase images
h_pq[m, n] = h[2m + p, 2n + q] (N x N, N = side / 2) and the phase kernels
w_pq[a, b] = w[2a + p, 2b + q] (5 x 5, zero where 2a + p > 8),
    y[i, j] = sum over c, p, q, a, b of h_pq[c, i + a, j + b] w_pq[c, a, b].
An N x N circular correlation gives the (N - 4) x (N - 4) outputs exactly (none wraps around),
so in the DFT domain every frequency bin k is one complex matrix product over K = 4 C inputs:
Y_k = H_k conj(W_k)^T. Of the N x (N/2 + 1) bins of a real 2-D DFT, those of the columns v = 0
and v = N/2 are conjugate in pairs (u, N - u), so only the independent ones are kept (52 for
N = 10). The transforms themselves are small real matrix products that write the spectra
straight into the layout of one batched real matmul per pass:
    [Re H; Im H] (2B x K) @ [Re W; Im W]^T (K x 2O)
whose four blocks give Re Y = Hr Wr' + Hi Wi' and Im Y = Hi Wr' - Hr Wi'. The backward is the
exact adjoint, written out (two more batched matmuls and the transposed transforms). The
polyphase split and merge are PyTorch pads and permutes (a C++ version never gained the 1.3x a
speed path must gain, and was removed).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from models.compile_barrier import eager_under_compile

KERNEL = 9  # with stride 2
PHASE_KERNEL = (KERNEL + 1) // 2  # 5: the 9x9 kernel padded to 10x10, split in 4 phases
# Without a speed plan: below this batch the fixed cost of transforming the weights leaves less than
# the 1.3x a speed path must gain (bench/README.md has the factors by batch).
MIN_BATCH = 48

_transforms: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
_direct_only = False


@contextlib.contextmanager
def direct_convolutions():
    """Inside, every PrimaryCaps layer uses nn.Conv2d, e.g. to count a network's nominal FLOPs."""
    global _direct_only
    previous, _direct_only = _direct_only, True
    try:
        yield
    finally:
        _direct_only = previous


def direct_only() -> bool:
    return _direct_only


def worthwhile(h: torch.Tensor, min_batch: int = MIN_BATCH) -> bool:
    """Where the DFT path may beat nn.Conv2d: in training (the gain is all in the backward; a
    forward alone runs at the same speed either way), on the CPU, float32 or bf16 (CPU autocast),
    batch >= min_batch (a speed plan measured on the CPU at hand passes 1). On CUDA cuDNN is left
    to do it."""
    return (
        torch.is_grad_enabled()
        and h.device.type == "cpu"
        and h.dtype in (torch.float32, torch.bfloat16)
        and h.shape[0] >= min_batch
    )


def compute_dtype(h: torch.Tensor) -> torch.dtype:
    """bf16 input (CPU autocast) is transformed, mixed and transformed back in bf16, on the matrix
    units; anything else in at least float32."""
    if h.dtype == torch.bfloat16:
        return torch.bfloat16
    return torch.promote_types(h.dtype, torch.float32)


def _self_conjugate_columns(n: int) -> set[int]:
    """rfft2 columns whose bins come in conjugate pairs (u, n - u): v = 0, and v = n/2 for even n."""
    return {0, n // 2} if n % 2 == 0 else {0}


def _independent_bins(n: int) -> list[tuple[int, int]]:
    """(u, v) of the rfft2 bins kept: all but the conjugate halves of those columns."""
    paired = _self_conjugate_columns(n)
    return [(u, v) for u in range(n) for v in range(n // 2 + 1) if not (v in paired and u > n // 2)]


def _build_transforms(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In float64: image -> spectrum (n*n, 2 bins), 5x5 kernel -> spectrum (25, 2 bins) and
    spectrum -> valid outputs (2 bins, side*side); columns/rows are bin * 2 + (re, im)."""
    bins = _independent_bins(n)
    half = n // 2 + 1
    columns = torch.tensor([u * half + v for u, v in bins])
    basis = torch.eye(n * n, dtype=torch.float64).view(n * n, n, n)
    spectra = torch.fft.rfft2(basis).reshape(n * n, n * half)[:, columns]
    image_to_spectrum = torch.stack([spectra.real, spectra.imag], dim=2).reshape(n * n, 2 * len(bins))
    kernel_to_spectrum = image_to_spectrum.view(n, n, -1)[:PHASE_KERNEL, :PHASE_KERNEL].reshape(
        PHASE_KERNEL**2, -1
    )
    side = n - PHASE_KERNEL + 1
    paired = _self_conjugate_columns(n)
    spectrum_to_output = torch.zeros(len(bins), 2, side * side, dtype=torch.float64)
    for index, (u, v) in enumerate(bins):
        for part, unit in enumerate((1.0, 1j)):
            spectrum = torch.zeros(n, half, dtype=torch.complex128)
            spectrum[u, v] += unit
            if v in paired and 0 < u < n - u:  # the dropped conjugate partner
                spectrum[n - u, v] += complex(unit).conjugate()
            spectrum_to_output[index, part] = torch.fft.irfft2(spectrum, s=(n, n))[:side, :side].reshape(-1)
    return image_to_spectrum, kernel_to_spectrum, spectrum_to_output.reshape(2 * len(bins), side * side)


def _transforms_for(n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    key = (n, like.dtype, like.device)
    if key not in _transforms:
        _transforms[key] = tuple(t.to(like).contiguous() for t in _build_transforms(n))
    return _transforms[key]


def _split_phases(x: torch.Tensor, n: int) -> torch.Tensor:
    """(R, S, S) -> (R * 4, n * n), S <= 2n: row r * 4 + p * 2 + q is phase (p, q) of image r,
    x[r, 2i + p, 2j + q] at i * n + j, zero beyond the side."""
    rows, side = x.shape[0], x.shape[1]
    padded = F.pad(x, (0, 2 * n - side, 0, 2 * n - side)).reshape(rows, n, 2, n, 2)
    return padded.permute(0, 2, 4, 1, 3).reshape(rows * 4, n * n)


def _merge_phases(g: torch.Tensor, side: int) -> torch.Tensor:
    """The inverse layout: (R * 4, n * n) -> (R, side, side), dropping positions beyond the side."""
    rows, n = g.shape[0] // 4, math.isqrt(g.shape[1])
    images = g.view(rows, 2, 2, n, n).permute(0, 3, 1, 4, 2).reshape(rows, 2 * n, 2 * n)
    return images[:, :side, :side].contiguous()


class _Stride2ConvDFT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, bias):
        batch, channels, side, _ = h.shape
        out_channels = w.shape[0]
        n, inputs = side // 2, 4 * channels
        image_to_spectrum, kernel_to_spectrum, spectrum_to_output = _transforms_for(n, h)
        bins = image_to_spectrum.shape[1] // 2
        # rows of bin k: [Re H_k; Im H_k] (2B x K) and [Re W_k; Im W_k] (2O x K)
        h_phases = _split_phases(h.view(batch * channels, side, side), n)
        h_spectra = torch.mm(image_to_spectrum.t(), h_phases.t()).view(bins, 2 * batch, inputs)
        w_phases = _split_phases(w.view(out_channels * channels, KERNEL, KERNEL), PHASE_KERNEL)
        w_spectra = torch.mm(kernel_to_spectrum.t(), w_phases.t()).view(bins, 2 * out_channels, inputs)
        products = torch.bmm(h_spectra, w_spectra.transpose(1, 2)).view(bins, 2, batch, 2, out_channels)
        y_spectra = h.new_empty(bins, 2, batch, out_channels)
        torch.add(products[:, 0, :, 0], products[:, 1, :, 1], out=y_spectra[:, 0])
        torch.sub(products[:, 1, :, 0], products[:, 0, :, 1], out=y_spectra[:, 1])
        out_side = n - PHASE_KERNEL + 1
        y = torch.mm(y_spectra.view(2 * bins, -1).t(), spectrum_to_output).view(batch, out_channels, out_side, out_side)
        ctx.save_for_backward(h_spectra, w_spectra)
        ctx.n = n
        return y + bias.view(1, -1, 1, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        h_spectra, w_spectra = ctx.saved_tensors
        bins, double_batch, inputs = h_spectra.shape
        batch, channels, out_channels = double_batch // 2, inputs // 4, w_spectra.shape[1] // 2
        n = ctx.n
        image_to_spectrum, kernel_to_spectrum, spectrum_to_output = _transforms_for(n, grad_y)
        grad_spectra = torch.mm(spectrum_to_output, grad_y.reshape(batch * out_channels, -1).t())
        grad_spectra = grad_spectra.view(bins, 2, batch, out_channels)
        real, imag = grad_spectra[:, 0], grad_spectra[:, 1]
        # adjoint of the four-block combination in the forward
        grad_products = grad_y.new_empty(bins, 2, batch, 2, out_channels)
        grad_products[:, 0, :, 0] = real
        grad_products[:, 1, :, 1] = real
        grad_products[:, 1, :, 0] = imag
        torch.neg(imag, out=grad_products[:, 0, :, 1])
        grad_products = grad_products.view(bins, 2 * batch, 2 * out_channels)
        grad_h = grad_w = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_h_spectra = torch.bmm(grad_products, w_spectra).view(2 * bins, batch * inputs)
            grad_h_phases = torch.mm(grad_h_spectra.t(), image_to_spectrum.t())
            grad_h = _merge_phases(grad_h_phases, 2 * n).view(batch, channels, 2 * n, 2 * n)
        if ctx.needs_input_grad[1]:
            grad_w_spectra = torch.bmm(grad_products.transpose(1, 2), h_spectra)
            grad_w_phases = torch.mm(grad_w_spectra.view(2 * bins, -1).t(), kernel_to_spectrum.t())
            grad_w = _merge_phases(grad_w_phases, KERNEL).view(out_channels, channels, KERNEL, KERNEL)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum((0, 2, 3))
        return grad_h, grad_w, grad_bias


@eager_under_compile
def stride2_conv_dft(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`F.conv2d(h, w, bias, stride=2)` for a 9x9 kernel w (O, C, 9, 9) and a square h (B, C, S, S)."""
    if w.shape[2:] != (KERNEL, KERNEL) or h.shape[2] != h.shape[3] or h.shape[2] < KERNEL:
        raise ValueError(f"stride2_conv_dft takes a 9x9 kernel on a square input >= 9, got {tuple(w.shape)} "
                         f"on {tuple(h.shape)}")
    if h.shape[-1] % 2:  # a zero row and column at the far edge change no output of a stride-2 conv
        h = F.pad(h, (0, 1, 0, 1))
    # Autocast is off inside (the out= products do not autocast); the dtype is chosen here.
    dtype = compute_dtype(h)
    with torch.autocast(h.device.type, enabled=False):
        return _Stride2ConvDFT.apply(h.to(dtype).contiguous(), w.to(dtype).contiguous(), bias.to(dtype))
