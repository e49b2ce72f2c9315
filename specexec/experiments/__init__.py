"""The experiment runner of the SpecExec paper (``run_exp.py`` / ``specexec bench``).

Modules: ``flags`` (flags, sweeps, configurations), ``datasets`` (prompt sets), ``loop`` (the
run), ``report`` (records, summary table, files), ``plot`` (the figure), ``interrupts``.
"""

from .loop import main

__all__ = ["main"]
