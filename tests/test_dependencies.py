"""acestep_core and weights_convert never import a reference implementation or matplotlib (test-only extras)."""

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import acestep_core, weights_convert
for pkg in (acestep_core, weights_convert):
    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
        if not m.name.endswith("__main__"):
            importlib.import_module(m.name)
bad = sorted(n for n in sys.modules if n.split(".")[0] in ("diffusers", "transformers", "matplotlib"))
print(",".join(bad))
"""


def test_library_imports_no_reference():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"reference modules imported: {out.stdout.strip()}"
