"""Red-team: code that parses but nests deeper than Python's recursion limit."""

from __future__ import annotations

from phi_ray.decontam.astmatch import match_rate, units

SOLUTION = "def add(a, b):\n    return a + b\n"


def test_a_deep_expression_neither_crashes_decontam_nor_hides_a_copied_solution():
    # ast.parse accepts a 2,000-term sum; the recursive serialiser then raised
    # RecursionError out of the decontam stage. Padding a copied benchmark solution with
    # such an expression must not hide it from the matcher either.
    deep = "def pad(a):\n    return a" + " + a" * 2000 + "\n"
    got = units(deep + SOLUTION)
    assert got and match_rate(got, units(SOLUTION, "add")) == 1.0
