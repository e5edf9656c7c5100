"""Training: recipe, loop, optimiser, EMA, distributed helpers."""
