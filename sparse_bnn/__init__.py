"""sparse_bnn: structurally sparse Bayesian neural networks in NumPyro over Flax NNX."""
__version__ = "0.1.0"
