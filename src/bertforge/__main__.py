"""`python -m bertforge ...` (and `torchrun -m bertforge ...`) run the CLI."""

import sys

from bertforge.cli import main

sys.exit(main())
