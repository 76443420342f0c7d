"""Weights that ship with the package: the demo model (`demo_nl_motion.weights.h5`) and its provenance."""
