"""`ray job submit -- python jobs/pack.py --preset phi1 --run NAME [--set k=v ...]`: phi-ray pack."""

import sys

from phi_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pack", *sys.argv[1:]]))
