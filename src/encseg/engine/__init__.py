"""engine: training, evaluation, metrics, run directories."""
