"""``python -m amorsize.cli``: the same as ``python -m amorsize``."""

import sys

from amorsize.cli import main

if __name__ == "__main__":
    sys.exit(main())
