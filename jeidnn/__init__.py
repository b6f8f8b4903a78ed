"""JEI-DNN: jointly learned early-exit gates and classifiers (Regol et al., ICLR 2024). Tracked in issue 5."""
