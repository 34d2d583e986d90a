"""The ClientApp module loads diffusers only when a device trains: a deployed
SuperNode runs each message in a fresh process, and a `query` needs no model."""

from tests.imports import modules_loaded

MODEL = ("diffusers", "qfd_app.diffusion.ddpm")


def test_loading_the_client_app_leaves_the_model_libraries_for_train():
    assert modules_loaded("from qfd_app.client_app import app", MODEL) == []
    # the probe sees them once they are loaded
    code = "from qfd_app.client_app import app; from qfd_app.diffusion import ddpm"
    assert modules_loaded(code, MODEL) == list(MODEL)
