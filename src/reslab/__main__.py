"""``python -m reslab`` (and ``torchrun -m reslab train ...``) runs the command line."""

import sys

from reslab.cli import main

if __name__ == "__main__":
    sys.exit(main())
