"""python -m specquant_gguf.cli ARGS = specquant ARGS."""
import sys

from . import main

sys.exit(main())
