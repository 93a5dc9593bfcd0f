"""Layer 4b, grid search: static (T, p) and adaptive-decoder grids scored through the eval runner,
their oracle cell, heatmaps, and the final paired comparison. Imports the layers below, never `training`."""
