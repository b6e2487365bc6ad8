"""``python -m fcnseg``: the same as the ``fcnseg`` command."""

import sys

from .cli import main

sys.exit(main())
