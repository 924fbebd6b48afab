"""`ray job submit ... -- python jobs/report.py --preset P --run NAME`: `phi-ray report` as a Ray job."""

import sys

from phi_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
