"""``python -m gristmill`` = the ``gristmill`` command (for launchers that want a module)."""

import sys

from gristmill.cli import main

sys.exit(main())
