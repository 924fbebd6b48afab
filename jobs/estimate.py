"""`ray job submit ... -- python jobs/estimate.py --preset P --run NAME`: `phi-ray estimate` as a Ray job."""

import sys

from phi_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["estimate", *sys.argv[1:]]))
