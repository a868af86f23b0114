"""The GPU-cluster simulator: hardware profiles and a roofline cost model (numpy, no jax)."""
