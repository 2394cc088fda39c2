import sys

from scaledmm.cli import main

sys.exit(main())
