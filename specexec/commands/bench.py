"""``specexec bench``: the experiment runner (the same program as ``run_exp.py``)."""

from ..experiments.loop import HELP, add_arguments, run

__all__ = ["HELP", "add_arguments", "run"]
