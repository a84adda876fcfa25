import sys

from build_engines.cli import main

if __name__ == "__main__":  # a spawned child (the demo fit, demo/pinned.py) must not run the CLI again
    sys.exit(main())
