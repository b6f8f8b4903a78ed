"""DyT: dynamic tuning of vision transformers (Zhao et al., NeurIPS 2024). Implementation tracked in issue 6."""
