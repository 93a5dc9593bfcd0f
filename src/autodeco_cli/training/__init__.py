"""Layer 4a, training the heads: data (on-policy generation, re-balancing, tokenising), losses, the
MLE trainer, the reward trainer, steering, recipes and checkpoints. Imports the layers below."""
