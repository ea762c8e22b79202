"""Generation backends implementing `himac_ray.generation.Generator` (vLLM and Hugging Face).

Each backend module imports its heavy library lazily so `himac_ray` stays importable without it.
"""
