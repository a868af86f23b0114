"""Output-length predictor: trace logs -> Flax ensemble -> Orbax checkpoint -> scheduler."""
