"""The study engine: runs a spec's grid points as Optuna trials (`runner`), keeping every trial's
worker honest (`liveness`), each trial doing what its study kind asks (`tasks`; `throughput` runs the
benchmark). What it stores, and how, is `studies.store`."""
