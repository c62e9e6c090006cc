"""The Hugging Face MoE architectures our decoder loads from and exports to, by `architectures[0]` name.

    get_architecture("Qwen3MoeForCausalLM").config_from_hf(AutoConfig.from_pretrained(path))
"""

from rl_platform.model.architectures import ernie45_moe, olmoe, qwen3_moe  # noqa: F401  (registers them)
from rl_platform.model.architectures.base import ARCHITECTURES, HFArchitecture


def supported_architectures() -> list[str]:
    return sorted(ARCHITECTURES)


def get_architecture(name: str, where: str = "config.json architectures") -> type[HFArchitecture]:
    """The translation class of `name`; a ValueError listing the supported ones otherwise."""
    if name not in ARCHITECTURES:
        raise ValueError(f"{where}={name!r} is not supported; supported architectures: {supported_architectures()}. "
                         "See docs/bring_your_own_model.md for what each needs.")
    return ARCHITECTURES[name]


__all__ = ["ARCHITECTURES", "HFArchitecture", "get_architecture", "supported_architectures"]
