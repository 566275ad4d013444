"""Editing on the user's own geometry: anatomy-conditioned generation, inpainting, outpainting and segmentation, all
as one known-region configuration (see docs/editing.md). The API lives in ``medsyn.editing.api``."""
