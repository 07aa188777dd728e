"""``python -m amorsize``: the amorsize command line (see :mod:`amorsize.cli`)."""

import sys

from amorsize.cli import main

if __name__ == "__main__":
    sys.exit(main())
