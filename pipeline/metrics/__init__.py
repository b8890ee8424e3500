"""Evaluation metrics (DESIGN 5), one small module each: the maths as pure functions over
arrays, the networks built by `build_*` functions that take their weights file (or None
for a random-initialised network, used by tests and benchmarks)."""
