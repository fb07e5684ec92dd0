"""Measuring a model: perplexity and zero-shot accuracy through one scoring protocol (scoring.py).

Imports only numpy (and tqdm when present) at module level, so that bench/ can run the same
scoring code against llama.cpp in a separate environment.
"""
