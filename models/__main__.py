"""``python -m eigpool.models``: the same as ``eigpool-train``."""

import sys

from .train import main

sys.exit(main())
