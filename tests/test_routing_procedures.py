"""The routing procedures of models/routing_procedures.py, CapsNet's `routing` option, and
Efficient-CapsNet. The hand-worked examples route two children to two parents in two dimensions;
their expected values are worked out in the comments and written with `math`, not by calling the
code under test."""
import math

import pytest
import torch

import models
from models import routing_procedures
from models.capsnet import CapsNetConfig
from models.efficient_capsnet import efficient_squash
from models.routing import votes_and_route

NAMES = models.routing_names()
ITERATIVE = {"dynamic": True, "inverted_dot_product": True, "uniform": False, "self_attention": False, "random": False}
SMALL = {"conv1_channels": 16, "primary_types": 4}  # 144 primary capsules: a fast CapsNet


class FixedDraw(routing_procedures.RandomRouting):
    """Random routing with a given draw of the logits, so that its function can be checked."""

    def __init__(self, *args, draw: torch.Tensor):
        super().__init__(*args)
        self.draw = draw

    def logits(self, batch, children, parents, device):
        return self.draw


def build(name, children, parents, dim, iters=3, **options):
    return routing_procedures.build(name, children, parents, dim, iters, **options)


def random_inputs(seed=0, batch=2, children=12, parents=5, child_dim=4, dim=3):
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, children, child_dim, generator=generator)
    weight = 0.5 * torch.randn(children, parents, child_dim, dim, generator=generator)
    return u, weight


def two_children(votes):
    """u and W whose votes u_hat_{j|i} are votes[i][j]: child 0 is e1 and child 1 is e2, so the
    vote of child i for parent j is row i of W_ij."""
    u = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    weight = torch.zeros(2, 2, 2, 2)
    for i in range(2):
        for j in range(2):
            weight[i, j, i] = torch.tensor(votes[i][j])
    return u, weight


def sabour_length(x):
    """Length of Sabour et al.'s squash of a vector of length x."""
    return x * x / (1 + x * x)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_registry_lists_the_procedures_and_capsnet_takes_them():
    assert NAMES == ["dynamic", "inverted_dot_product", "random", "self_attention", "uniform"]
    assert CapsNetConfig().routing == "dynamic"
    with pytest.raises(models.ConfigError, match="routing"):
        models.create("capsnet", routing="em")
    with pytest.raises(ValueError, match="unknown routing procedure"):
        build("em", 2, 2, 2)


@pytest.mark.parametrize("name", NAMES)
def test_couplings_sum_to_one_over_the_parents(name):
    u, weight = random_inputs(1)
    procedure = build(name, 12, 5, 3, iters=3)
    if name == "self_attention":  # a learned prior, added after the softmax: what is recorded is the softmax part
        procedure.prior.data.normal_()
    couplings: list[torch.Tensor] = []
    v = procedure(u, weight, 3, False, couplings)
    assert v.shape == (2, 5, 3) and v.dtype == torch.float32
    assert len(couplings) == (3 if ITERATIVE[name] else 1)
    for coupling in couplings:
        assert coupling.shape == (2, 12, 5)
        assert (coupling >= 0).all()
        assert torch.allclose(coupling.sum(dim=-1), torch.ones(2, 12), atol=1e-6)
    if ITERATIVE[name]:  # agreement moves the couplings away from the uniform start
        assert torch.allclose(couplings[0], torch.full((2, 12, 5), 0.2))
        assert not torch.allclose(couplings[-1], couplings[0], atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_permuting_the_children_changes_nothing(name):
    u, weight = random_inputs(2)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    procedure = build(name, 12, 5, 3)
    permuted = build(name, 12, 5, 3)
    if name == "self_attention":
        procedure.prior.data.normal_()
        permuted.prior.data.copy_(procedure.prior.data[:, perm])  # the prior is indexed by child
    if name == "inverted_dot_product":
        permuted.load_state_dict(procedure.state_dict())
    if name == "random":
        draw = torch.randn(2, 12, 5)
        procedure, permuted = FixedDraw(12, 5, 3, 3, draw=draw), FixedDraw(12, 5, 3, 3, draw=draw[:, perm])
    couplings: list[torch.Tensor] = []
    couplings_permuted: list[torch.Tensor] = []
    v = procedure(u, weight, 3, False, couplings)
    v_permuted = permuted(u[:, perm], weight[perm], 3, False, couplings_permuted)
    assert torch.allclose(v, v_permuted, atol=1e-6)
    for coupling, coupling_permuted in zip(couplings, couplings_permuted, strict=True):
        assert torch.allclose(coupling[:, perm], coupling_permuted, atol=1e-6)


# Votes u_hat_{j|i} (child i, parent j) of the hand-worked examples.
AGREE_ON_PARENT_0 = [[(1.0, 0.0), (0.0, 1.0)], [(1.0, 0.0), (0.0, -1.0)]]


def test_uniform_by_hand():
    # c_ij = 1/2: s_0 = ((1, 0) + (1, 0)) / 2 = (1, 0), |v_0| = 1 / 2; s_1 = ((0, 1) + (0, -1)) / 2 = 0.
    u, weight = two_children(AGREE_ON_PARENT_0)
    couplings: list[torch.Tensor] = []
    v = build("uniform", 2, 2, 2)(u, weight, 3, False, couplings)
    assert torch.allclose(v, torch.tensor([[[0.5, 0.0], [0.0, 0.0]]]), atol=1e-7)
    assert len(couplings) == 1 and torch.allclose(couplings[0], torch.full((1, 2, 2), 0.5))


def test_dynamic_by_hand():
    # Iteration 1 as uniform: v_0 = (1/2, 0), v_1 = 0. Agreement: b_i0 = u_hat_{0|i} . v_0 = 1/2 for
    # both children, b_i1 = 0; so c_i0 = sigmoid(1/2) = 0.6224593, c_i1 = 0.3775407.
    # Iteration 2: s_0 = (2 c_i0, 0) = (1.2449187, 0), |v_0| = 1.5498225 / 2.5498225 = 0.6078158;
    # s_1 = c_i1 ((0, 1) + (0, -1)) = 0.
    u, weight = two_children(AGREE_ON_PARENT_0)
    couplings: list[torch.Tensor] = []
    v = build("dynamic", 2, 2, 2)(u, weight, 2, False, couplings)
    c0 = sigmoid(0.5)
    assert torch.allclose(v, torch.tensor([[[sabour_length(2 * c0), 0.0], [0.0, 0.0]]]), atol=1e-6)
    assert abs(sabour_length(2 * c0) - 0.6078158) < 1e-7
    assert torch.allclose(couplings[1], torch.tensor([[[c0, 1 - c0], [c0, 1 - c0]]]), atol=1e-6)


@pytest.mark.parametrize("squash_name", ["sabour", "efficient"])
def test_self_attention_by_hand(squash_name):
    # Sums of the votes per parent: (2, 0) for parent 0, (0, 0) for parent 1. Agreement / sqrt(2):
    # A_i0 = (1, 0) . (2, 0) / sqrt(2) = sqrt(2), A_i1 = 0; softmax over parents:
    # c_i0 = sigmoid(sqrt(2)) = 0.8044297, c_i1 = 0.1955703.
    # Prior b (parents x children) = [[0.1, -0.2], [0.3, 0.0]], added to the couplings:
    # s_0 = (c_00 + 0.1)(1, 0) + (c_10 - 0.2)(1, 0) = (2 c - 0.1, 0) = (1.5088594, 0);
    # s_1 = (c_01 + 0.3)(0, 1) + (c_11 + 0)(0, -1) = (0, 0.3).
    u, weight = two_children(AGREE_ON_PARENT_0)
    options = {"squash_fn": efficient_squash} if squash_name == "efficient" else {}
    procedure = build("self_attention", 2, 2, 2, iters=1, **options)
    assert procedure.prior.shape == (2, 2) and torch.equal(procedure.prior, torch.zeros(2, 2))
    procedure.prior.data = torch.tensor([[0.1, -0.2], [0.3, 0.0]])
    couplings: list[torch.Tensor] = []
    v = procedure(u, weight, 5, False, couplings)
    c = sigmoid(math.sqrt(2))
    x0, x1 = 2 * c - 0.1, 0.3
    if squash_name == "sabour":  # |v| = x^2 / (1 + x^2): 0.6948109 and 0.09 / 1.09 = 0.0825688
        lengths = sabour_length(x0), sabour_length(x1)
    else:  # |v| = 1 - exp(-x): 0.7788379 and 0.2591818
        lengths = 1 - math.exp(-x0), 1 - math.exp(-x1)
    assert torch.allclose(v, torch.tensor([[[lengths[0], 0.0], [0.0, lengths[1]]]]), atol=1e-6)
    assert torch.allclose(couplings[0], torch.tensor([[[c, 1 - c], [c, 1 - c]]]), atol=1e-6)


@pytest.mark.parametrize("readout", ["squash", "linear"])
def test_inverted_dot_product_by_hand(readout):
    # Votes: u_hat_{0|0} = (1, 0), u_hat_{0|1} = (3, 0); u_hat_{1|0} = (0, 1), u_hat_{1|1} = (1, 0).
    # LayerNorm (gain 1, bias 0, eps 1e-5) of (a, b) is (1, -1) (a - b) / 2 / sqrt((a - b)^2 / 4 + eps).
    # Iteration 1, r = 1/2: s_0 = (2, 0) -> p_0 = k (1, -1), k = 1 / sqrt(1 + 1e-5) = 0.9999950;
    #   s_1 = (1/2, 1/2) -> p_1 = 0.
    # Iteration 2: a_i0 = u_hat_{0|i} . p_0 / sqrt(2): k / sqrt(2) for child 0, 3 k / sqrt(2) for
    #   child 1; a_i1 = 0. r_00 = sigmoid(k / sqrt(2)) = 0.6697608, r_10 = sigmoid(3k / sqrt(2)) = 0.8929572.
    #   s_0 = (r_00 + 3 r_10, 0) = (3.3486323, 0); s_1 = r_01 (0, 1) + r_11 (1, 0) = (1 - r_10, 1 - r_00),
    #   whose a - b = r_00 - r_10 = -0.2231964.
    u, weight = two_children([[(1.0, 0.0), (0.0, 1.0)], [(3.0, 0.0), (1.0, 0.0)]])
    procedure = build("inverted_dot_product", 2, 2, 2, iters=2, readout=readout)
    if readout == "linear":  # the shared readout w . p + w0 with w = (0.5, -0.5), w0 = 0
        procedure.classifier.weight.data = torch.tensor([[0.5, -0.5]])
        procedure.classifier.bias.data.zero_()
    couplings: list[torch.Tensor] = []
    v = procedure(u, weight, 2, False, couplings)

    def layer_norm_scale(difference):  # p = scale * (1, -1)
        return difference / 2 / math.sqrt(difference**2 / 4 + 1e-5)

    k = layer_norm_scale(2.0)
    r00, r10 = sigmoid(k / math.sqrt(2)), sigmoid(3 * k / math.sqrt(2))
    poses = [layer_norm_scale(r00 + 3 * r10), layer_norm_scale(r00 - r10)]  # 0.9999982 and -0.9995988
    expected = []
    for scale in poses:
        if readout == "squash":  # |p| = sqrt(2) |scale|, |v| = 2 scale^2 / (1 + 2 scale^2)
            length = sabour_length(math.sqrt(2) * abs(scale))
        else:  # |v| = sigmoid(0.5 scale + 0.5 scale)
            length = sigmoid(scale)
        direction = math.copysign(1 / math.sqrt(2), scale)
        expected.append([length * direction, -length * direction])
    assert torch.allclose(v, torch.tensor([expected]), atol=1e-6)
    assert torch.allclose(couplings[0], torch.full((1, 2, 2), 0.5))
    assert torch.allclose(couplings[1], torch.tensor([[[r00, 1 - r00], [r10, 1 - r10]]]), atol=1e-6)


def test_random_by_hand_and_redrawn_every_call():
    # Logits [[0, ln 3], [ln 2, 0]]: c_0 = (1/4, 3/4), c_1 = (2/3, 1/3).
    # s_0 = (1/4 + 2/3)(1, 0) = (11/12, 0), |v_0| = (121/144) / (265/144) = 121/265;
    # s_1 = (3/4)(0, 1) + (1/3)(0, -1) = (0, 5/12), |v_1| = (25/144) / (169/144) = 25/169.
    u, weight = two_children(AGREE_ON_PARENT_0)
    draw = torch.tensor([[[0.0, math.log(3)], [math.log(2), 0.0]]])
    couplings: list[torch.Tensor] = []
    v = FixedDraw(2, 2, 2, 3, draw=draw)(u, weight, 3, False, couplings)
    assert torch.allclose(v, torch.tensor([[[121 / 265, 0.0], [0.0, 25 / 169]]]), atol=1e-6)
    assert torch.allclose(couplings[0], torch.tensor([[[1 / 4, 3 / 4], [2 / 3, 1 / 3]]]), atol=1e-6)
    # The real draw: fresh per call and per example, reproducible under a seed.
    procedure = build("random", 12, 5, 3)
    u, weight = random_inputs(4)
    first, second = [], []
    torch.manual_seed(5)
    procedure(u, weight, 3, False, first)
    procedure(u, weight, 3, False, second)
    assert not torch.allclose(first[0], second[0]) and not torch.allclose(first[0][0], first[0][1])
    again = []
    torch.manual_seed(5)
    procedure(u, weight, 3, False, again)
    assert torch.equal(first[0], again[0])


def test_uniform_is_dynamic_with_one_iteration_bit_for_bit():
    u, weight = random_inputs(6)
    assert torch.equal(build("uniform", 12, 5, 3)(u, weight, 3), votes_and_route(u, weight, 1))
    images, labels = torch.rand(3, 1, 28, 28), torch.tensor([1, 5, 9])
    runs = []
    for options in ({"routing": "uniform", "routing_iters": 3}, {"routing_iters": 1}):
        torch.manual_seed(7)
        model = models.create("capsnet", **SMALL, **options).train()
        output = model(images, labels)
        model.loss(output, images, labels).total.backward()
        runs.append((model, output))
    (uniform, out_uniform), (dynamic, out_dynamic) = runs
    assert torch.equal(out_uniform.scores, out_dynamic.scores)
    assert torch.equal(out_uniform.reconstruction, out_dynamic.reconstruction)
    named = dict(dynamic.named_parameters())
    for name, parameter in uniform.named_parameters():
        assert torch.equal(parameter, named[name]) and torch.equal(parameter.grad, named[name].grad), name


def test_dynamic_keeps_the_state_dict_of_the_model_without_a_routing_choice():
    torch.manual_seed(8)
    default = models.create("capsnet", **SMALL)
    torch.manual_seed(8)
    dynamic = models.create("capsnet", routing="dynamic", **SMALL)
    assert dynamic.digits.procedure is None
    assert list(default.state_dict()) == list(dynamic.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), dynamic.state_dict().values()))


@pytest.mark.parametrize("name", NAMES)
def test_detach_inner_changes_gradients_only_where_couplings_depend_on_the_votes(name):
    u, weight = random_inputs(9)

    def grad(detach):
        w = weight.clone().requires_grad_(True)
        torch.manual_seed(11)  # the same draw for random routing
        build(name, 12, 5, 3)(u, w, 3, detach).norm(dim=-1).sum().backward()
        return w.grad

    changes = name in {"dynamic", "inverted_dot_product", "self_attention"}
    assert torch.allclose(grad(True), grad(False), atol=1e-7) != changes


@pytest.mark.parametrize("name", NAMES)
def test_votes_and_routing_run_in_float32_under_autocast(name):
    u, weight = random_inputs(12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = build(name, 12, 5, 3)(u.bfloat16(), weight, 3)
    assert v.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_every_procedure_trains_a_capsnet_step(name):
    torch.manual_seed(13)
    model = models.create("capsnet", routing=name, **SMALL).train()
    images, labels = torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 3, 8])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    output = model(images, labels)
    assert output.scores.shape == (4, 10) and ((output.scores >= 0) & (output.scores < 1)).all()
    loss = model.loss(output, images, labels).total
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert not torch.equal(p, before[n]), n
    owned = {n for n in before if n.startswith("digits.procedure.")}
    assert owned == {"dynamic": set(), "uniform": set(), "random": set(),
                     "self_attention": {"digits.procedure.prior"},
                     "inverted_dot_product": {"digits.procedure.norm.weight", "digits.procedure.norm.bias",
                                              "digits.procedure.classifier.weight",
                                              "digits.procedure.classifier.bias"}}[name]


@pytest.mark.parametrize("name, options", [("capsnet", {"routing": "self_attention", **SMALL}),
                                           ("capsnet", {"routing": "inverted_dot_product", **SMALL}),
                                           ("efficient_capsnet", {})])
def test_flops_can_be_counted_under_inference_mode(name, options):
    # The bench counts a model's FLOPs this way; PyTorch's module tracker fails where a module is
    # called with a Parameter under inference_mode, so the layers call their procedure's forward.
    from torch.utils.flop_counter import FlopCounterMode

    model = models.create(name, **options).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.rand(2, 1, 28, 28))
    assert counter.get_total_flops() > 0


def test_efficient_squash_by_hand():
    # |s| = ln 2 -> 1 - 1/2 = 1/2; |s| = ln 4 -> 3/4, direction kept; s = 0 -> 0.
    s = torch.tensor([[math.log(2), 0.0], [0.6 * math.log(4), 0.8 * math.log(4)], [0.0, 0.0]])
    assert torch.allclose(efficient_squash(s), torch.tensor([[0.5, 0.0], [0.45, 0.6], [0.0, 0.0]]), atol=1e-6)


def test_efficient_capsnet_parameter_counts_and_layers():
    # The paper's 161,824 (without the decoder): conv 832 + BN 64 + 18,496 + 128 + 36,928 + 128
    # + 73,856 + 256 + depthwise 10,496 + W 20,480 + prior b 160. The decoder adds
    # 160 x 512 + 512 + 512 x 1024 + 1024 + 1024 x 784 + 784 = 1,411,344.
    without = models.create("efficient_capsnet", decoder=False)
    assert sum(p.numel() for p in without.parameters()) == 161_824
    assert without.decoder is None
    with_decoder = models.create("efficient_capsnet")
    assert sum(p.numel() for p in with_decoder.parameters()) == 161_824 + 1_411_344
    kinds = [type(layer).__name__ for layer in without.features]
    assert kinds == ["Conv2d", "ReLU", "BatchNorm2d"] * 4  # ReLU before BatchNorm, as the authors' code
    assert without.primary.conv.kernel_size == (9, 9) and without.primary.conv.groups == 128
    assert models.make_config("efficient_capsnet", input_size=40).primary_grid == 15
    with pytest.raises(models.ConfigError, match="input_size"):
        models.create("efficient_capsnet", input_size=10)


def test_efficient_capsnet_trains_a_step():
    torch.manual_seed(14)
    model = models.create("efficient_capsnet").train()
    images, labels = torch.rand(4, 1, 28, 28), torch.tensor([2, 4, 6, 8])
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    output = model(images, labels)
    assert output.scores.shape == (4, 10) and ((output.scores >= 0) & (output.scores < 1)).all()
    assert output.reconstruction.shape == images.shape
    terms = model.loss(output, images, labels)
    sse = (output.reconstruction - images).pow(2).flatten(1).sum(1).mean()
    assert torch.allclose(terms.total, terms.parts["margin"] + 0.0005 * sse)
    before = model.digits.weight.detach().clone()
    optimizer.zero_grad()
    terms.total.backward()
    optimizer.step()
    assert model.digits.routing.prior.grad.abs().sum() > 0
    assert not torch.equal(model.digits.weight, before)
    model.eval()
    with torch.no_grad():
        assert model(images).scores.shape == (4, 10)
