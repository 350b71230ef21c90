"""Training infrastructure: run records (seed, commit, config, environment)."""
