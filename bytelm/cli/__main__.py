"""`python -m bytelm.cli ...` (as `accelerate launch -m bytelm.cli train ...` runs it)."""

import sys

from bytelm.cli import main

sys.exit(main())
