"""Ray: starting or joining a cluster, resource queries, the Ray Data batch pools, the
load -> model -> write stream, what a stage reports, and the worker setup hook."""
