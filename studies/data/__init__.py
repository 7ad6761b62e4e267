"""Data: MNIST and Fashion-MNIST on disk and in tensors (`datasets`, `idx`), the official affNIST
files (`affnist`) and the generated sets (`affnist_style`, `multimnist`, both cached by
`generated_cache`), expanded MNIST on a 40x40 canvas (`expanded`), stratified subsets (`subsets`),
the splits a model is trained and evaluated on with their rule of a right answer (`splits`), the
robustness sets tested along training (`robustness_sets`) and the batched augmentations that run on
the training device (`augment`). Nothing here knows about models, training or studies; bad values
are refused with the checks every config shares (`models.fields`, which imports nothing of the
project).
"""
