"""``python -m pipelines`` = the ``gristmill`` command (for launchers that want a module)."""

import sys

from pipelines.cli import main

sys.exit(main())
