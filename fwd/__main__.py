"""``python -m fwd``: the same as the ``fwd`` command."""

import sys

from fwd.cli import main

sys.exit(main())
