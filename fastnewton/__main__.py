"""``python -m fastnewton`` (the ``fastnewton`` command): see ``fastnewton.cli``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
