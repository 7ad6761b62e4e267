"""Study specs, data, training, storage and reports of the capsbench suite."""
