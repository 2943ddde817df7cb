"""The former name of :mod:`gristmill.trainer.job`, kept so that job scripts written as
``ray job submit ... -- python -m gristmill.trainer.pretrain --config FILE`` keep working: the same entry point."""

import sys

from gristmill.trainer.job import main

if __name__ == "__main__":
    sys.exit(main())
