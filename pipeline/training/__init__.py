"""Training as a library: the pair data, the published objective (losses) and step on
NetG/NetD, checkpoint I/O and the test-pair quality check; stages/train.py runs them on Ray
Train."""
