"""Elastic sub-model sampling for pretraining: the sampler lives in rl_platform.model.elastic, below both the
pretraining loop and the RL learner (elastic RL samples sub-models the same way); re-exported here."""

from rl_platform.model.elastic import ElasticConfig, named_family, sample_submodel

__all__ = ["ElasticConfig", "named_family", "sample_submodel"]
