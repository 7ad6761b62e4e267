"""Training one configuration: its typed `config`, the training loop with checkpoints and
evaluation (`train`), the optimiser (`optimizer`) and the device and mixed-precision choices
(`devices`). Uses the data package and the models; knows nothing about studies.
"""
