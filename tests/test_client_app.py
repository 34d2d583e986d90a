"""The ClientApp module loads diffusers only when a device trains: a deployed
SuperNode runs each message in a fresh process, and a `query` needs no model."""

import subprocess
import sys


def test_loading_the_client_app_leaves_the_model_libraries_for_train():
    code = (
        "import sys\n"
        "from qfd_app.client_app import app\n"
        "heavy = ('diffusers', 'qfd_app.diffusion.ddpm')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "from qfd_app.diffusion import ddpm\n"
        "print('diffusers' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    # the second line shows the check can see diffusers when it is there
    assert done.stdout.split() == ["[]", "True"]
