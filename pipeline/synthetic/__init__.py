"""The synthetic DeepFashion-like dataset: drawn figures and the deterministic tree."""
