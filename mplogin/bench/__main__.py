"""``python -m mplogin.bench``: the benchmark, or with ``inline`` the inline server."""

import sys

from mplogin.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
