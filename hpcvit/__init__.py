"""hpcvit: orchestration of Vision Transformer training on particle-physics detector images."""

__version__ = "0.1.0"
