import os

import pytest
import torch

# Never reach a hub from tests, even by accident.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def pipeline_root(tmp_path_factory):
    """``name -> folder`` shared by every test that runs pipeline ``name``: the vision and medical
    pipelines cache their synthetic base beside the run folder, so runs in one parent build it once."""
    roots = {}

    def root(name: str):
        if name not in roots:
            roots[name] = tmp_path_factory.mktemp(name.replace(".", "-"))
        return roots[name]

    return root
