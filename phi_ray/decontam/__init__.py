"""Decontamination against HumanEval / MBPP: n-gram overlap, embedding L2 and AST match rate.

The stage entry point is :func:`phi_ray.decontam.stage.run`; see that module for outputs.
"""
