import random
from collections import Counter

import pytest

from pretrain.elastic import ElasticConfig, named_family, sample_submodel
from rl_platform.config import ConfigError
from rl_platform.model import MoEModelConfig, SubModel

MODEL = MoEModelConfig(num_layers=8, num_experts=32, top_k=4)


def test_sampling_rates_match_the_configured_probabilities():
    rng = random.Random(0)
    config = ElasticConfig()
    samples = [sample_submodel(rng, MODEL, config) for _ in range(4000)]
    full_depth = sum(len(s.layers) == 8 for s in samples) / len(samples)
    full_width = sum(len(s.experts) == 32 for s in samples) / len(samples)
    default_k = sum(s.top_k == 4 for s in samples) / len(samples)
    assert full_depth == pytest.approx(0.75, abs=0.03)
    assert full_width == pytest.approx(0.8, abs=0.03)
    assert default_k == pytest.approx(0.8, abs=0.03)
    reduced_k = Counter(s.top_k for s in samples if s.top_k < 4)
    assert set(reduced_k) == {1, 2, 3}
    assert {len(s.experts) for s in samples} == {16, 32}
    assert min(len(s.layers) for s in samples) == 4
    for s in samples:
        s.validate(MODEL)


def test_disabled_sampling_always_gives_the_full_model():
    rng = random.Random(0)
    assert all(sample_submodel(rng, MODEL, ElasticConfig(enabled=False)).is_full(MODEL) for _ in range(50))


def test_truncate_mode_keeps_a_prefix_of_layers():
    rng = random.Random(1)
    config = ElasticConfig(full_depth_prob=0.0, depth_mode="truncate")
    for _ in range(20):
        s = sample_submodel(rng, MODEL, config)
        assert s.layers == tuple(range(len(s.layers)))


def test_named_family_members_are_valid():
    family = named_family(MODEL)
    depth = family["depth-75"].layers
    assert len(depth) == 6 and depth[0] == 0 and depth[-1] == 7
    assert family["experts-50"].experts == tuple(range(16))
    assert family["topk-2"].top_k == 2
    for sm in family.values():
        sm.validate(MODEL)


def test_bad_probability_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"ElasticConfig.full_depth_prob=1.5 must be a probability"):
        ElasticConfig(full_depth_prob=1.5)
    with pytest.raises(ConfigError, match=r"SubModel.top_k=5"):
        SubModel(layers=(0,), experts=(0, 1, 2, 3), top_k=5).validate(MODEL)
