import sys

from smartbox.cli import main

sys.exit(main())
