"""`python -m mmjax.eval ...`: see `mmjax.eval.run`."""

import sys

from mmjax.eval.run import main

if __name__ == "__main__":
    sys.exit(main())
