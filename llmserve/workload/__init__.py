"""Workloads: loaders, synthetic generators, replay, and the JSONL request log."""
