"""`acestep parity`: run acestep-core and a reference implementation (diffusers 0.42.1, or the official ACE-Step
1.5 code in its own environment) on one checkpoint and report stage by stage how far apart they are.

A package of its own because it imports the references (and matplotlib for --html): `acestep_core` and
`weights_convert` never do. It needs the optional extra `pip install "acestep-core[parity]"`; see
docs/parity-report.md.
"""

from .case import ParityCase, stand_in_latents, stand_in_source  # noqa: F401
from .cli import add_arguments, main, run  # noqa: F401
from .engine import compare  # noqa: F401
from .official import OfficialEnv, compare_official  # noqa: F401
from .report import Report, StageResult, Thresholds, snr_db, stft_distance, tensor_metrics  # noqa: F401
