"""Task runners: each composes data, model, the training loop, inference and metrics for one
job (SQuAD, GLUE, pretraining). The CLI calls `run(config)`; so can Python code."""
