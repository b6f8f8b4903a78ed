"""ADN: adaptive-depth networks with skippable sub-paths (Kang & Lee, NeurIPS 2024). Tracked in issue 3."""
