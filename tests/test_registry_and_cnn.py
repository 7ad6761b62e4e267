import pytest
import torch

import models


def test_registry_lists_models():
    assert models.names() == ["capsnet", "capsnet_multi", "cnn_multi", "cnn_paper", "cnn_pool", "efficient_capsnet"]


def test_unknown_model_lists_valid_names():
    with pytest.raises(models.ConfigError, match="capsnet, capsnet_multi, cnn_multi, cnn_paper, cnn_pool"):
        models.create("resnet")


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match="routing_iters"):
        models.create("capsnet", routing_iterations=3)


def test_cnn_parameter_counts():
    # Paper: 35.4M for its baseline; the pooled variant has 4.59M.
    assert sum(p.numel() for p in models.create("cnn_paper").parameters()) == 35_445_522
    assert sum(p.numel() for p in models.create("cnn_pool").parameters()) == 4_587_282
    assert sum(p.numel() for p in models.create("cnn_pool", pool=False).parameters()) == 35_445_522


@pytest.mark.parametrize("name", ["capsnet", "cnn_paper", "cnn_pool"])
@pytest.mark.parametrize("size", [28, 40])
def test_every_model_reports_class_scores_the_same_way(name, size):
    model = models.create(name, input_size=size).eval()
    images = torch.rand(2, 1, size, size)
    output = model(images)
    assert output.scores.shape == (2, 10)
    terms = model.loss(output, images, torch.tensor([1, 2]))
    assert terms.total.ndim == 0 and torch.isfinite(terms.total)
