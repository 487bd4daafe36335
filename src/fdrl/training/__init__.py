"""Training: feature batches, the trainer (fit / evaluate / checkpoint / resume),
cross-validation, ablations and run folders."""
