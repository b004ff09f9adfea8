"""fwd: a userspace L4 load-balancer forwarder (GLB Director compatible)."""

__version__ = "0.1.0"
