"""`ray job submit -- python jobs/finetune.py --preset phi1 --run NAME [--set k=v ...]`: phi-ray finetune."""

import sys

from phi_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
