"""The jobs of benchmarks/accuracy.py, one module each (its docstring says what it runs), and
what they share (`common`, and `transformers_side`: the transformers loop of a comparison)."""
