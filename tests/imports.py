"""What a piece of code imports, seen from a fresh interpreter."""

import ast
import subprocess
import sys


def modules_loaded(code: str, modules: tuple[str, ...]) -> list[str]:
    """Those of `modules` that are in `sys.modules` after `code` runs in a fresh
    Python, sorted."""
    probe = (
        f"{code}\nimport sys\nprint(sorted(m for m in {modules!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])
