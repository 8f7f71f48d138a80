"""python -m weights_convert SRC DST [...]: runs acestep_core.convert.cli (see its --help)."""

import sys

from acestep_core.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
