"""`python -m lockerd.display`: the same as the lockerd-display command."""

import sys

from lockerd.display import main

sys.exit(main())
