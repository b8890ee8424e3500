"""The generator: NetG/NetD, the reference parity check, the inference API, and generation
over tables (planning, batches, save modes)."""
