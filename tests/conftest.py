"""Shared fixtures: everything a test needs is generated here, nothing is downloaded."""
import pytest


@pytest.fixture(scope='session')
def body_model_dir(tmp_path_factory):
    """Procedural SMPL/MANO-format model files in the official layout (see synthetic_bodies)."""
    from data_pipelines import synthetic_bodies
    out = tmp_path_factory.mktemp('body_models')
    synthetic_bodies.write_body_models(str(out), seed=0)
    return out
