"""Training one configuration: its typed `config`, the training loop with checkpoints and
evaluation (`loop`), robustness curves along training (`curves`) and sweeps of a trained model
(`sweep`), the optimiser (`optimizer`), the device and mixed-precision choices (`devices`) and the
CPU speed plan (`speed_choice`). Uses the data package and the models; knows no data set by name
and nothing about studies.
"""
