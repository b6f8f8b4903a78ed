"""Proxy experiments: each paper's claims on embedded data, through the subprojects' entry points."""
