"""DS-Net: dynamic slimmable networks (Li et al., CVPR 2021). Implementation tracked in issue 4."""
