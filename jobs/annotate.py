"""`ray job submit ... -- python jobs/annotate.py --preset P --run NAME [--set llm.base_url=URL]`."""

import sys

from phi_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["annotate", *sys.argv[1:]]))
