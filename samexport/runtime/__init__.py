"""NumPy runtime: backends that run the exported graphs, and the ``SamPredictor`` API."""
