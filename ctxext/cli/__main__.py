"""``python -m ctxext.cli``: the ``ctxext`` command."""

import sys

from . import main

sys.exit(main())
