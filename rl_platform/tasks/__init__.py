"""Task families shared by the corpus generator (pretrain), the verifiers (rewards) and the RL prompts."""
