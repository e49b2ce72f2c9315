"""The SpecExec paper's experiment runner: ``python run_exp.py --help`` (same as ``specexec bench``)."""

import sys

from specexec.experiments import main

if __name__ == "__main__":
    sys.exit(main(prog="run_exp.py"))
