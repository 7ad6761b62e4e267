"""Data: MNIST and Fashion-MNIST on disk and in tensors (`datasets`, `idx`), the official affNIST
files (`affnist`) and the generated affNIST-style set (`affnist_style`), expanded MNIST on a 40x40
canvas (`expanded`) and the batched augmentations that run on the training device (`augment`).
Nothing here knows about models, training or studies.
"""
