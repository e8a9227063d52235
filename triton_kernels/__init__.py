"""fusedconv's Triton kernel source: the single source of truth for its GPU code."""
