"""DS-Net: dynamic slimmable networks (Li et al., CVPR 2021), see dsnet/README.md."""
