"""Slicer-side helpers of the MedSyn module: worker client, scene <-> files, segment mapping, ROI maths, dependencies.

Nothing here imports torch, transformers or monai: the backend runs in a separate worker process.
"""
