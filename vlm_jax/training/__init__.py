"""Training mechanics: parameter partitioning, optimizer, sharded train state, train step, metrics."""
