"""`python -m cubesearch`: the same as the `cubesearch` command."""

import sys

from cubesearch.cli import main

if __name__ == "__main__":
    sys.exit(main())
