"""Optimizer utilities shared by pretraining and the RL learner: gradient clipping (AdaGC) and LR schedules."""
