"""`ray job submit ... -- python jobs/synth.py [textbooks|exercises] --preset P --run NAME
[--set llm.base_url=URL] [--set synth.n_textbooks=N]`.

Generates synthetic textbooks / exercises through the LLM layer (resumable from its cache),
or, with no ``llm.base_url``, mines exercises from the run's ``score/filtered/``. Writes
``synth/textbooks/``, ``synth/exercises/`` and ``synth/diversity.json``.
"""

import sys

from phi_ray.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    # The kind is the sub-command's optional positional: keep it first.
    kind = [a for a in args[:1] if a in ("textbooks", "exercises", "all")]
    sys.exit(main(["synth", *kind, *args[len(kind) :]]))
