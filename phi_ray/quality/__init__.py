"""The phi-1 quality filter: CodeGen embeddings + a random forest, trained and applied at scale.

- :mod:`phi_ray.quality.embed`: :class:`~phi_ray.quality.embed.Embedder` (any Hugging Face
  model, or a seeded ``tiny-codegen``); truncation, pooling and batching policies.
- :mod:`phi_ray.quality.classifier`: :class:`~phi_ray.quality.classifier.QualityClassifier`
  (``load(path, embedder=None)``, ``score(codes) -> (probs, kept)``), used by Serve.
- :mod:`phi_ray.quality.train`: the ``classify`` stage (``phi-ray classify``).
- :mod:`phi_ray.quality.score`: the ``score`` stage (``phi-ray score``), restartable.
- :mod:`phi_ray.quality.data`: the Ray Data operators both stages share.
"""
