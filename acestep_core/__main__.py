"""`python -m acestep_core generate ...`: the same command line as the `acestep` script (cli.py)."""

import sys

from .cli import main

sys.exit(main())
