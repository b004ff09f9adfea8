"""The multi-tier lab: clients, two ECMP routers (BIRD 2), three L4 nodes (fwd + ExaBGP) and four
L7 nodes (HAProxy + a small app behind fwd-redirect), described once in lab/topology.py.

From that description come both the network-namespace lab of this machine (lab/netns.py:
``make lab-up`` / ``make lab-down``, the scenario tests in tests/lab, ``make demo``) and the
containerlab topology with every node's configuration files (containerlab/, written by
``python -m lab render``; tests/lab/test_render.py checks the committed files are up to date).
"""
