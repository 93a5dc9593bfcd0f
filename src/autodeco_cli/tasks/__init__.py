"""Layer 2 (beside `engine`), the eval tasks: the registry of `evals/*.yaml` definitions, their data,
generators (arithmetic, random choice), scorers and the code-execution sandbox. Imports only `core`."""
