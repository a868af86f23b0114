"""Serving metrics: per-request/per-step records, summaries, and reports."""
