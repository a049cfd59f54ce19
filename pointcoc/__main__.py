"""``python -m pointcoc``: the ``pointcoc`` command (``python -m pointcoc env`` prints the environment report)."""
import sys

from pointcoc.commands import main

sys.exit(main())
