#!/usr/bin/env python3
"""python convert.py MODEL --out FILE [options]  — same as `specquant convert`."""
import sys

from specquant_gguf.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
