"""Layer 3, evaluation: tasks x decoding strategies on one engine, resumable, with per-question
scores, metrics, paired comparisons and the tables that show them. Imports `core`, `engine`, `tasks`."""
