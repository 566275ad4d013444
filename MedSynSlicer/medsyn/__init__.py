"""MedSyn backend: text-conditioned joint chest-CT + anatomy diffusion, runnable without Slicer."""

__version__ = "0.1.0"
