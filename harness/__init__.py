"""Training harness: LM skeleton, objectives, loss, budget, trainer, results."""
