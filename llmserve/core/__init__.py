"""The scheduler state machine. Pure Python: imports nothing heavier than numpy (tested)."""
