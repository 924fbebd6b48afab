"""`ray job submit ... -- python jobs/classify.py --preset P --run NAME [--set quality.KEY=VALUE]`."""

import sys

from phi_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["classify", *sys.argv[1:]]))
