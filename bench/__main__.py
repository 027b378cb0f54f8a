"""`python -m bench`: open-loop load against a real `campaign-express serve`."""

import sys

from bench.platform_calls import main

sys.exit(main())
