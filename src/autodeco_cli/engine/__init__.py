"""Layer 2, generation: model loading, our decode loop (sampler, KV and prefix caches, CPU fast
paths, data-parallel replicas), the vLLM engine (`engine.vllm`), and `runtime.open_engine`, which
picks one. Every engine satisfies `interface.Engine`. Imports only `core`."""
