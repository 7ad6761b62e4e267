"""The study engine: runs a spec's grid points as Optuna trials (`runner`), on the storage it
opens (`storage`), each trial doing what its study kind asks (`tasks`; `throughput` reaches the
benchmark).
"""
