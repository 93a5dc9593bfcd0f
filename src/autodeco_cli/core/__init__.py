"""Layer 1, the foundation: errors and consoles, the decoding math (distribution, strategies, heads),
prompt formats, statistics, the C kernels and the CPU facts they need. Imports nothing above it."""
