"""`ray job submit ... -- python jobs/ingest.py --preset P --run NAME [--set corpus.KEY=VALUE]`.

Reads the configured corpus sources (The Stack Parquet, the hub, StackOverflow records,
.py trees), filters and deduplicates them, and writes ``ingest/corpus/*.parquet``.
"""

import sys

from phi_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
