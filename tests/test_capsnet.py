import pytest
import torch

import models
from models.capsnet import CapsNetConfig, PrimaryCaps, margin_loss, squash
from tests.reference_routing import dynamic_routing


def test_parameter_counts_match_the_paper():
    # Paper: 8.2M with the decoder, 6.8M without; ours are exact counts of that network.
    with_decoder = sum(p.numel() for p in models.create("capsnet").parameters())
    without = sum(p.numel() for p in models.create("capsnet", decoder=False).parameters())
    assert with_decoder == 8_215_568
    assert without == 6_804_224
    assert abs(with_decoder / 8.2e6 - 1) < 0.005 and abs(without / 6.8e6 - 1) < 0.005


@pytest.mark.parametrize("size, grid", [(28, 6), (40, 12)])
def test_capsule_grid_follows_the_input_size(size, grid):
    config = CapsNetConfig(input_size=size)
    assert config.primary_grid == grid and config.num_primary == 32 * grid * grid
    model = models.create("capsnet", input_size=size).eval()
    output = model(torch.rand(3, 1, size, size))
    assert output.scores.shape == (3, 10)
    assert output.reconstruction.shape == (3, 1, size, size)


def test_squash_maps_lengths_into_unit_interval_and_keeps_direction():
    torch.manual_seed(0)
    s = torch.randn(1000, 16) * torch.logspace(-3, 2, 1000).unsqueeze(1)
    v = squash(s)
    lengths = v.norm(dim=-1)
    assert (lengths >= 0).all() and (lengths < 1).all()
    # Far out, 1 - |v| = 1 / (1 + |s|^2) drops below float32 resolution: bounded, not above 1.
    assert squash(torch.full((1, 16), 1e4)).norm() <= 1.0
    cosine = torch.nn.functional.cosine_similarity(s, v, dim=-1)
    assert torch.allclose(cosine, torch.ones_like(cosine), atol=1e-5)
    # |s| = 1 gives length 1/2; |s| = 3 gives 9/10.
    assert squash(torch.tensor([[0.6, 0.8]])).norm().item() == pytest.approx(0.5)
    assert squash(torch.tensor([[3.0, 0.0]])).norm().item() == pytest.approx(0.9)
    assert torch.equal(squash(torch.zeros(2, 8)), torch.zeros(2, 8))


@pytest.mark.parametrize("iters", [1, 2, 3, 5])
def test_coupling_coefficients_sum_to_one_over_parents(iters):
    torch.manual_seed(1)
    votes = torch.randn(4, 50, 10, 16)
    couplings: list[torch.Tensor] = []
    dynamic_routing(votes, iters, couplings=couplings)
    assert len(couplings) == iters
    for coupling in couplings:
        assert coupling.shape == (4, 50, 10)
        assert torch.allclose(coupling.sum(dim=-1), torch.ones(4, 50), atol=1e-6)
        assert (coupling >= 0).all()
    if iters > 1:  # routing actually moves the coupling away from uniform
        assert not torch.allclose(couplings[-1], couplings[0])


def test_one_routing_iteration_is_uniform_coupling():
    torch.manual_seed(2)
    votes = torch.randn(3, 20, 10, 16)
    couplings: list[torch.Tensor] = []
    v = dynamic_routing(votes, 1, couplings=couplings)
    assert torch.allclose(couplings[0], torch.full((3, 20, 10), 0.1))
    assert torch.allclose(v, squash(votes.sum(dim=1) / 10), atol=1e-6)


def test_digit_caps_records_couplings_of_the_full_model():
    model = models.create("capsnet", routing_iters=3).eval()
    couplings: list[torch.Tensor] = []
    model.capsules(torch.rand(2, 1, 28, 28), couplings)
    assert len(couplings) == 3 and couplings[0].shape == (2, 1152, 10)
    for coupling in couplings:
        assert torch.allclose(coupling.sum(-1), torch.ones(2, 1152), atol=1e-5)


def test_detach_inner_changes_gradients_only_with_more_than_one_iteration():
    torch.manual_seed(3)
    u = torch.randn(2, 30, 8)
    weight = torch.randn(30, 10, 8, 16) * 0.3

    def grad(iters, detach):
        w = weight.clone().requires_grad_(True)
        votes = torch.einsum("bic,ijcd->bijd", u, w)
        dynamic_routing(votes, iters, detach).norm(dim=-1).sum().backward()
        return w.grad

    assert torch.allclose(grad(1, True), grad(1, False))
    assert not torch.allclose(grad(3, True), grad(3, False))


def test_margin_loss_against_hand_computed_values():
    config = CapsNetConfig()
    lengths = torch.tensor([[0.95, 0.30, 0.05], [0.95, 0.30, 0.05]])
    labels = torch.tensor([0, 1])
    # Row 0: present 0 (0.95 > 0.9); absent 0.5 * (0.3 - 0.1)^2 = 0.02; 0.05 < 0.1 adds 0.
    # Row 1: present (0.9 - 0.3)^2 = 0.36; absent 0.5 * (0.95 - 0.1)^2 = 0.36125.
    expected = torch.tensor([0.02, 0.72125])
    assert torch.allclose(margin_loss(lengths, labels, config), expected)
    official = CapsNetConfig(margin_convention="official")
    assert torch.allclose(margin_loss(lengths, labels, official), expected / 3 * 0.5)
    # Labels as a column (one digit per image in the (B, n) form MultiMNIST's pairs use): the same.
    assert torch.equal(margin_loss(lengths, labels.unsqueeze(1), config), margin_loss(lengths, labels, config))


def test_total_loss_adds_weighted_sum_of_squared_errors():
    model = models.create("capsnet", recon_weight=0.5).train()
    images = torch.rand(2, 1, 28, 28)
    labels = torch.tensor([3, 7])
    output = model(images, labels)
    terms = model.loss(output, images, labels)
    sse = (output.reconstruction - images).pow(2).sum() / 2
    margin = margin_loss(output.scores, labels, model.config).mean()
    assert torch.allclose(terms.total, margin + 0.5 * sse)
    no_recon = models.create("capsnet", recon_weight=0.0).train()
    out = no_recon(images, labels)
    assert torch.allclose(no_recon.loss(out, images, labels).total, margin_loss(out.scores, labels, no_recon.config).mean())


def test_decoder_is_masked_by_true_label_in_training_and_by_prediction_in_eval():
    torch.manual_seed(4)
    model = models.create("capsnet")
    images = torch.rand(4, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        capsules = model.capsules(images)
        predicted = capsules.norm(dim=-1).argmax(dim=1)
        wrong = (predicted + 1) % 10
        eval_out = model(images, wrong)  # eval ignores the labels it is given
        assert torch.allclose(eval_out.reconstruction, model.decoder(capsules, predicted))
        model.train()
        train_out = model(images, wrong)
        assert torch.allclose(train_out.reconstruction, model.decoder(capsules, wrong))
        # Capsules are short at initialisation, so the two differ only slightly, but they differ.
        assert not torch.equal(train_out.reconstruction, eval_out.reconstruction)
    # The decoder sees only the chosen capsule: changing another capsule changes nothing.
    other = capsules.clone()
    other[torch.arange(4), (wrong + 1) % 10] += 1.0
    assert torch.allclose(model.decoder(capsules, wrong), model.decoder(other, wrong))


def test_primary_capsule_is_dim_channels_at_one_position():
    torch.manual_seed(5)
    layer = PrimaryCaps(in_channels=4, types=3, dim=8)
    conv_out = torch.randn(2, 3 * 8, 5, 5)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return conv_out

    layer.conv = Fixed()  # inspect the grouping alone
    capsules = layer(torch.empty(0))
    assert capsules.shape == (2, 3 * 5 * 5, 8)
    for t, y, x in [(0, 0, 0), (1, 2, 3), (2, 4, 1)]:
        expected = squash(conv_out[:, t * 8 : (t + 1) * 8, y, x])
        assert torch.allclose(capsules[:, t * 25 + y * 5 + x], expected)


@pytest.mark.parametrize("bad", [{"routing_iters": 0}, {"recon_weight": -1.0}, {"margin_convention": "x"}])
def test_invalid_options_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        models.create("capsnet", **bad)
