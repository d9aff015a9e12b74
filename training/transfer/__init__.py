"""Transfer learning: frozen-backbone features (cached per photo) and the softmax head chosen on inner folds."""
