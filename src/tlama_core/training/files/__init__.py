"""The run's files: checkpoint IO (atomic, in the background), the run's checkpoints (best, pruning), sharded saves,
the finite-weights check before each save and the run's tokenizer copied beside its checkpoints."""
