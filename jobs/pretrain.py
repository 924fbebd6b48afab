"""`ray job submit -- python jobs/pretrain.py --preset phi1 --run NAME [--set k=v ...]`: phi-ray pretrain."""

import sys

from phi_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
