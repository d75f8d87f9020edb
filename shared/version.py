"""The version of Distill3D and of its wire protocol. The protocol number changes only when a
message changes incompatibly; both sides refuse a different number with a message saying which side
to update."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 2  # 2: submit may carry a mesh (source "texture" or "shape")
