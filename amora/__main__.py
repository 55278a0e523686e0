"""`python -m amora --config PATH`: the same as `amora-agent`."""

import sys

from amora.agent_main import main

sys.exit(main())
