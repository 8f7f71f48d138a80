"""`acestep parity`: run acestep-core and a reference implementation (diffusers 0.42.1) on one checkpoint and
report stage by stage how far apart they are.

A package of its own because it imports the reference: `acestep_core` and `weights_convert` never do. It needs
the optional extra `pip install "acestep-core[parity]"`; see docs/parity-report.md.
"""

from .engine import ParityCase, add_arguments, compare, main, run  # noqa: F401
from .report import Report, StageResult, Thresholds, snr_db, stft_distance, tensor_metrics  # noqa: F401
