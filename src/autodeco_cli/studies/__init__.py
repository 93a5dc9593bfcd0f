"""Layer 5, studies: resumable end-to-end pipelines (reproduce, where-it-wins, ablation) that train,
search and evaluate, and the reports they write."""
