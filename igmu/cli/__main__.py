"""`python -m igmu.cli`: the same as the `igmu` command."""

import sys

from igmu.cli.main import main

sys.exit(main())
