"""`python -m tiergate.streams.cli`: the same as the `tiergate` console script."""

import sys

from . import main

sys.exit(main())
