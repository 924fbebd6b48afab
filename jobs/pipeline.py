"""`ray job submit ... -- python jobs/pipeline.py --preset phi1 [--from S] [--to S]`.

A thin entry point: it parses like `phi-ray run` and calls the library. Inside a Ray job,
RAY_ADDRESS is set, so the stages run on the job's cluster.
"""

import sys

from phi_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
