"""Pure operators: layer maps for depth growth, and tensor folds for residual-branch scaling."""
