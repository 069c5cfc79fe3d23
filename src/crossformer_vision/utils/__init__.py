"""Process-level helpers shared by the model and task layers (no training machinery)."""
