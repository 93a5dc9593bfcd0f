"""Generation engines other than our own decode loop (`generation.py`): today, vLLM."""
