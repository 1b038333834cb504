import sys

from mixa.cli import main

sys.exit(main())
