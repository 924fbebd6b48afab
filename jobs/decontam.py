"""`ray job submit ... -- python jobs/decontam.py --preset P --run NAME [--set decontam.KEY=VALUE]`.

Decontaminates the run's exercises (or ``decontam.datasets``) against HumanEval / MBPP and
writes ``decontam/``: report.json, pruned/tau=<t>/, exercises/, humaneval_split.json.
"""

import sys

from phi_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["decontam", *sys.argv[1:]]))
