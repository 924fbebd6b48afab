"""``phi-ray ablate``: the paper's central comparison, classifier-filtered code against a
random sample of the same corpus at equal tokens, same model, steps and seeds."""

from phi_ray.ablate.stage import PAPER_350M, run

__all__ = ["PAPER_350M", "run"]
