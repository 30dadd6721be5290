"""`python -m app` is the same as the `stacksona-gate` command."""

import sys

from app.cli import main

sys.exit(main())
