"""`python -m benchmarks [part ...]`."""

import sys

from benchmarks.main import main

sys.exit(main(sys.argv[1:]))
