import pytest

from jobs.base_model import ensure_base_model
from jobs.recipes.rl import grpo_smoke


@pytest.fixture(scope="session")
def smoke_base_model(tmp_path_factory):
    """The pretrain_smoke base model, pretrained once per test session (about a minute)."""
    config = grpo_smoke().base_model
    config.cache_dir = str(tmp_path_factory.mktemp("models"))
    return ensure_base_model(config)


def subprocess_env() -> dict:
    """os.environ without the torch.distributed variables an in-process DeepSpeed world of one sets in this
    test process (a child would otherwise try to rendezvous on the port this process still holds)."""
    import os

    drop = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    return {k: v for k, v in os.environ.items() if k not in drop}
