"""Task-specific heads and glue built on the CrossFormer backbones."""
