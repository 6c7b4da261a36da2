"""puts_jax: JAX scoring engine for personalized utility-weight tuning (PRL-PUTS)."""

__version__ = "0.1.0"
