"""A torch-extension build lock left by a killed compile must not hang every later DeepSpeed start."""

import os

from rl_platform.optim.optimizer import STALE_EXTENSION_LOCK_S, clear_stale_extension_locks


def test_only_locks_older_than_any_real_build_are_removed(tmp_path):
    dead = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    live = tmp_path / "py311_cpu" / "other_op" / "lock"
    for lock in (dead, live):
        lock.parent.mkdir(parents=True)
        lock.touch()
    now = os.path.getmtime(live)
    os.utime(dead, (now - STALE_EXTENSION_LOCK_S - 1, now - STALE_EXTENSION_LOCK_S - 1))

    removed = clear_stale_extension_locks(str(tmp_path), now=now)

    assert removed == [str(dead)]
    assert not dead.exists() and live.exists()
    assert (dead.parent).is_dir()  # the cached build itself stays
