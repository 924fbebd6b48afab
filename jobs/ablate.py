"""`ray job submit -- python jobs/ablate.py --preset phi1-small --run NAME [--arms filtered,random]
[--seeds N] [--set ablate.parallel_runs=4]`: phi-ray ablate on a cluster."""

import sys

from phi_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
