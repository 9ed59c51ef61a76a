"""Benchmark tooling shared by scripts/: result files with the machine and date, and a gRPC load generator."""
