"""The thin layer shared by the five subprojects: data, distributed, FLOPs, tracking, checkpoints, config.

Subprojects import from here; nothing here imports a subproject (see ``DESIGN.md``).
"""

from common.errors import UserError, run_cli

__all__ = ["UserError", "run_cli"]
