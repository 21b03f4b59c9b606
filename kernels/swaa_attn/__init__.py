"""swaa_attn: attention under the SWAA mask (sliding window + sink tokens + FA-decode region)
for packed variable-length sequences, with a FlashAttention-style varlen API.

`swaa_attn_varlen_func` runs the Triton kernel where it can (CUDA, or the Triton
interpreter) and the PyTorch reference otherwise; `swaa_attn_varlen_ref` is the reference.
"""

from .checks import check_varlen_args
from .naive import swaa_attn_varlen_ref, visible
from .interface import swaa_attn_varlen_func

__all__ = ["swaa_attn_varlen_func", "swaa_attn_varlen_ref", "visible", "check_varlen_args"]
