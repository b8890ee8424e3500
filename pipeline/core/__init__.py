"""The pipeline's foundation: config, errors, where files live, table schemas, atomic file
writes, legacy CSVs, path checks, resumable tables, content digests, the run lock, image
I/O and safe weight loading."""
