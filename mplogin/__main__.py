"""``python -m mplogin``: the same as the ``mplogin`` console script."""

import sys

from mplogin.cli import main

if __name__ == "__main__":
    sys.exit(main())
