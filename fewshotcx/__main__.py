"""``python -m fewshotcx`` runs the ``fewshotcx`` command line (the same as the console script)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
