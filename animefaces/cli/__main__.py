"""``python -m animefaces.cli``: the same as the ``animefaces`` command."""

import sys

from .app import main

sys.exit(main())
