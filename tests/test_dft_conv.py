"""The DFT form of the PrimaryCaps convolution computes exactly what F.conv2d computes."""
import copy

import pytest
import torch
import torch.nn.functional as F

import models
from models.cpu.dft_conv import MIN_BATCH, direct_convolutions, stride2_conv_dft, worthwhile


def conv_and_grads(conv, h, w, b, grad_y):
    h, w, b = (t.detach().clone().requires_grad_() for t in (h, w, b))
    y = conv(h, w, b)
    y.backward(grad_y)
    return y.detach(), h.grad, w.grad, b.grad


def direct(h, w, b):
    return F.conv2d(h, w, b, stride=2)


@pytest.mark.parametrize("side", [20, 21, 32, 17])  # MNIST, odd, the 40x40 input's, the smallest
def test_matches_conv2d_in_float64(side):
    generator = torch.Generator().manual_seed(side)
    h = torch.randn(3, 4, side, side, dtype=torch.float64, generator=generator)
    w = torch.randn(5, 4, 9, 9, dtype=torch.float64, generator=generator)
    b = torch.randn(5, dtype=torch.float64, generator=generator)
    out_side = (side - 9) // 2 + 1
    grad_y = torch.randn(3, 5, out_side, out_side, dtype=torch.float64, generator=generator)
    ours = conv_and_grads(stride2_conv_dft, h, w, b, grad_y)
    expected = conv_and_grads(direct, h, w, b, grad_y)
    for name, got, want in zip(["y", "grad_h", "grad_w", "grad_b"], ours, expected):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


def test_matches_conv2d_at_the_papers_size_in_float32():
    generator = torch.Generator().manual_seed(0)
    h = torch.rand(2, 256, 20, 20, generator=generator)
    w = 0.01 * torch.randn(256, 256, 9, 9, generator=generator)
    b = torch.randn(256, generator=generator)
    grad_y = torch.randn(2, 256, 6, 6, generator=generator)
    ours = conv_and_grads(stride2_conv_dft, h, w, b, grad_y)
    for got, want in zip(ours, conv_and_grads(direct, h, w, b, grad_y)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_two_pending_graphs_keep_their_own_weight_spectra():
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(2, 3, 20, 20, dtype=torch.float64, generator=generator).requires_grad_() for _ in range(2)]
    weights = [torch.randn(4, 3, 9, 9, dtype=torch.float64, generator=generator).requires_grad_() for _ in range(2)]
    b = torch.zeros(4, dtype=torch.float64)
    # two forwards, then both backwards: each input gradient reads the spectra its forward saved
    pending = [stride2_conv_dft(h, w, b) for h, w in zip(inputs, weights)]
    for y in pending:
        y.sum().backward()
    for h, w in zip(inputs, weights):
        h_ref, w_ref = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        direct(h_ref, w_ref, b).sum().backward()
        torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-10, atol=1e-10)


def test_bf16_input_runs_in_bf16_about_as_accurately_as_a_bf16_convolution():
    # Under CPU autocast the input arrives in bf16; the transforms and the channel mixing then run
    # in bf16 on the matrix units. Its error against float64 stays within 2.5x of oneDNN's bf16
    # convolution's (measured at CapsNet's shape: 0.0049 against 0.0029 relative).
    torch.manual_seed(0)
    h, w, b = torch.randn(8, 32, 20, 20), 0.05 * torch.randn(16, 32, 9, 9), torch.zeros(16)
    w.requires_grad_(True)
    exact = direct(h.double(), w.detach().double(), b.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = stride2_conv_dft(h.bfloat16(), w, b)
        reference = direct(h.bfloat16(), w.detach().bfloat16(), b.bfloat16())
    assert y.dtype == torch.bfloat16

    def relative_error(value):
        return ((value.double() - exact).norm() / exact.norm()).item()

    assert relative_error(y) < 2.5 * relative_error(reference)
    y.float().sum().backward()
    assert w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()


def test_compiled_capsnet_matches_eager():
    torch.manual_seed(0)
    model = models.create("capsnet", primary_conv="dft")
    images, labels = torch.rand(2, 1, 28, 28), torch.tensor([3, 7])
    compiled = torch.compile(model, backend="eager")  # dynamo's graph breaks, without inductor's build time
    torch.testing.assert_close(compiled(images, labels).scores, model(images, labels).scores)


def test_runs_under_no_grad_and_inference_mode():
    h, w, b = torch.randn(2, 3, 20, 20), torch.randn(4, 3, 9, 9), torch.randn(4)
    with torch.no_grad():
        torch.testing.assert_close(stride2_conv_dft(h, w, b), direct(h, w, b), rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        torch.testing.assert_close(stride2_conv_dft(h, w, b), direct(h, w, b), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stride2_conv_dft(h, w, b), direct(h, w, b), rtol=1e-4, atol=1e-4)


def test_other_kernels_are_refused():
    with pytest.raises(ValueError, match="9x9 kernel"):
        stride2_conv_dft(torch.randn(1, 3, 20, 20), torch.randn(4, 3, 5, 5), torch.zeros(4))


def test_auto_takes_the_dft_only_where_it_is_faster():
    assert worthwhile(torch.empty(MIN_BATCH, 256, 20, 20))
    assert not worthwhile(torch.empty(MIN_BATCH - 1, 256, 20, 20))
    assert worthwhile(torch.empty(MIN_BATCH, 256, 20, 20, dtype=torch.bfloat16))  # CPU autocast: bf16 on AMX
    assert not worthwhile(torch.empty(MIN_BATCH, 256, 20, 20, device="meta"))
    with torch.no_grad():  # evaluation: a forward alone gains nothing
        assert not worthwhile(torch.empty(MIN_BATCH, 256, 20, 20))


def test_capsnet_gives_the_same_outputs_and_gradients_either_way():
    torch.manual_seed(0)
    dft = models.create("capsnet", primary_conv="dft")
    conv = models.create("capsnet", primary_conv="direct")
    conv.load_state_dict(copy.deepcopy(dft.state_dict()))
    images, labels = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    grads = []
    for model in (dft, conv):
        output = model(images, labels)
        model.loss(output, images, labels).total.backward()
        grads.append((output.scores.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-5)
    for name, grad in grads[0][1].items():
        torch.testing.assert_close(grad, grads[1][1][name], rtol=1e-3, atol=1e-6, msg=name)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="primary_conv: input should be 'auto', 'direct' or 'dft'"):
        models.create("capsnet", primary_conv="fft")


def test_direct_convolutions_switches_every_primarycaps_layer_to_conv2d():
    model = models.create("capsnet", primary_conv="dft")
    h = torch.empty(MIN_BATCH, 256, 20, 20)
    assert model.primary.uses_dft(h)
    with direct_convolutions():
        assert not model.primary.uses_dft(h)
    assert model.primary.uses_dft(h)


@pytest.mark.parametrize("side, n", [(9, 5), (20, 10), (8, 5)])
def test_phase_layouts_merge_inverts_split(side, n):
    from models.cpu import dft_conv

    x = torch.randn(6, side, side, generator=torch.Generator().manual_seed(side))
    phases = dft_conv._split_phases(x, n)
    assert torch.equal(dft_conv._merge_phases(phases, side), x)
    assert phases[1::4].view(6, n, n)[:, 0, 0].eq(x[:, 0, 1]).all()  # row 1 is phase (0, 1)
    assert phases.view(6, 4, n, n)[:, :, (side + 1) // 2 :].eq(0).all()  # zero beyond the side
