import sys

from sensorhub.cli import main

sys.exit(main())
