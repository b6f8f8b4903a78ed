"""PAD-Net: partially dynamic networks (He et al., ACL 2023). Implementation tracked in issue 7."""
