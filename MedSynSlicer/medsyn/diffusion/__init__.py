"""Model-agnostic diffusion: schedule, samplers, guidance and the known-region hook. Knows nothing of network internals."""
