"""The cloud job entry: hyperparameters -> config, object-storage sync, rank-block conversion, launch."""
