"""The vLLM engine: the AutoDeco model class and logits processor vLLM loads through its plugin entry
points, and `engine.VllmEngine`, which runs every command on vLLM."""
