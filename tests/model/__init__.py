"""Independent reference model of fwd's packet core and forwarding table.

Written from docs/packet-core.md only; it never imports fwd or its C core.
Tests compare the C code against it (STYLE.md: "expected outputs come from an
independent reference model ... never from the C code under test").
"""
