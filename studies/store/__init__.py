"""What is stored of a study and how it is reached: the storage (chosen, opened, locked, migrated,
and `StoredStudy`, the only code that calls Optuna's storage interface) and the records the engine
writes on trials and studies, which the engine and the report both read."""
