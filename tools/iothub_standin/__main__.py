import sys

from tools.iothub_standin.cli import main

sys.exit(main())
