"""RMSNorm and rotary position embedding: one fused pass each (forward and backward) on the GPU."""

from kernels.norm_rope.op import rms_norm, rope
from kernels.norm_rope.reference import rms_norm_reference, rope_reference

__all__ = ["rms_norm", "rms_norm_reference", "rope", "rope_reference"]
