"""Seeded class-stratified random subsets (studies/data/subsets.py) and the splits built from them."""
import pytest
import torch

from studies.data.subsets import class_quotas, stratified_subset, train_val_test_indices
from studies.training.config import TrainConfig
from studies.training.loop import load_splits

# An unbalanced, ordered label vector: 600 of class 0, 300 of 1, 100 of 2, in blocks.
LABELS = torch.cat([torch.zeros(600), torch.ones(300), torch.full((100,), 2)]).long()


def test_quotas_are_proportional_and_sum_to_the_size():
    assert class_quotas(LABELS, 100) == {0: 60, 1: 30, 2: 10}
    # 7 of 1000: exact shares 4.2, 2.1, 0.7; floors 4, 2, 0; the one left goes to the largest remainder.
    assert class_quotas(LABELS, 7) == {0: 4, 1: 2, 2: 1}
    assert class_quotas(LABELS, 1000) == {0: 600, 1: 300, 2: 100}
    with pytest.raises(ValueError):
        class_quotas(LABELS, 1001)


def test_a_subset_is_class_balanced_seeded_and_not_a_block():
    chosen = stratified_subset(LABELS, 100, seed=3)
    assert torch.bincount(LABELS[chosen]).tolist() == [60, 30, 10]
    assert torch.equal(chosen, stratified_subset(LABELS, 100, seed=3))
    assert not torch.equal(chosen, stratified_subset(LABELS, 100, seed=4))
    assert chosen.unique().numel() == 100 and torch.equal(chosen, chosen.sort().values)
    # Spread over each class's block, not its first members.
    class0 = chosen[LABELS[chosen] == 0]
    assert class0.min() < 60 < class0.max() and class0.max() > 300


def test_training_validation_and_test_indices_are_disjoint_and_stratified():
    test_labels = LABELS[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    train, val, test = train_val_test_indices(LABELS, test_labels, 500, 200, 100, seed=0)
    assert len(set(train.tolist()) & set(val.tolist())) == 0
    assert torch.bincount(LABELS[val]).tolist() == [120, 60, 20]
    assert torch.bincount(LABELS[train]).tolist() == [300, 150, 50]
    assert torch.bincount(test_labels[test], minlength=3).tolist() == [60, 30, 10]
    # The validation split does not depend on the training size; None takes everything left.
    all_train, same_val, full_test = train_val_test_indices(LABELS, test_labels, None, 200, None, seed=0)
    assert torch.equal(same_val, val) and len(all_train) == 800 and len(full_test) == 1000
    assert set(all_train.tolist()) | set(val.tolist()) == set(range(1000))


@pytest.mark.data
def test_mnist_splits_are_disjoint_stratified_and_full_when_asked():
    from studies.data import datasets

    config = TrainConfig(train_size=2000, val_size=1000, test_size=1000, device="cpu")
    train, val, test = load_splits(config, torch.device("cpu"))
    images, labels = datasets.load("mnist", "train")
    test_images, test_labels = datasets.load("mnist", "test")
    # Disjoint: no training image is a validation image (compared as pixels).
    as_bytes = {bytes(image.numpy()) for image in val.images[:, 0]}
    assert not any(bytes(image.numpy()) in as_bytes for image in train.images[:, 0])
    for split, source, size in ((train, labels, 2000), (val, labels, 1000), (test, test_labels, 1000)):
        expected = torch.tensor(list(class_quotas(source, size).values()))
        assert torch.equal(torch.bincount(split.labels, minlength=10), expected)
    # The whole test set by default, in its order.
    whole = load_splits(TrainConfig(train_size=10, device="cpu"), torch.device("cpu"))[2]
    assert len(whole) == 10000 and torch.equal(whole.labels, test_labels)
