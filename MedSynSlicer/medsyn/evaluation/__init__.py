"""Evaluation of generated volumes: CT-derived findings (pleural effusion, cardiothoracic ratio, %LAA-950),
volumes and mask/image consistency, and the ``medsyn evaluate`` command that measures a model on named prompts."""
