"""`ray job submit ... -- python jobs/evaluate.py --preset P --run NAME [--model DIR | --endpoint URL | --samples FILE]`."""

import sys

from phi_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
