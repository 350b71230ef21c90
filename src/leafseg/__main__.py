"""`python -m leafseg VERB ...` (and `torchrun ... -m leafseg train ...`): the command line of :mod:`leafseg.cli`."""

import sys

from leafseg.cli import main

if __name__ == "__main__":  # not when a spawned worker process re-imports the main module
    sys.exit(main())
