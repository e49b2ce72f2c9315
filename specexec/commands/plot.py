"""``specexec plot EXP_DIR``: draw an experiment's gen_rate and gen_speed against budget."""

from ..experiments.plot import HELP, add_arguments, run

__all__ = ["HELP", "add_arguments", "run"]
