"""swaa_attn: attention under the SWAA mask (sliding window + sink tokens + FA-decode region)
for packed variable-length sequences, with a FlashAttention-style varlen API.

`swaa_attn_varlen_func` runs the Triton kernel on CUDA tensors and the PyTorch reference
(`swaa_attn_varlen_ref`) otherwise; `full_causal_varlen` is full causal attention through torch
SDPA (cuDNN on Hopper) for layers without a window; `visible` is the mask and `visible_pairs`
its closed-form count.
"""

from .checks import check_varlen_args
from .dense import full_causal_varlen
from .interface import swaa_attn_varlen_func
from .naive import swaa_attn_varlen_ref, visible, visible_pairs, visible_pairs_varlen

__all__ = [
    "swaa_attn_varlen_func",
    "swaa_attn_varlen_ref",
    "full_causal_varlen",
    "visible",
    "visible_pairs",
    "visible_pairs_varlen",
    "check_varlen_args",
]
