"""Bridges from geognn models to other simulation engines (each needs its own optional package).

``geognn.integrations.torchsim``: ``GeoGNNModel``, a TorchSim model (``pip install torch-sim-atomistic``)
for batched relaxations and MD. Nothing here is imported by ``import geognn``.
"""
