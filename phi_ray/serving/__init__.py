"""Ray Serve: OpenAI-compatible completions for the phi model and the quality classifier.

``build_app`` (``phi_ray.serving.app``) assembles the application; ``phi-ray serve`` runs
it (``phi_ray.serving.stage``); ``serve/app.py`` and ``serve/config.yaml`` deploy it.
"""
