"""Small settings for each backbone in tests: fast on 2 CPU cores, but every code path on.

One entry per name in geognn.BACKBONES (test_model.py checks that none is missing).
"""

SMALL = {
    "schnet": dict(hidden_channels=16, num_filters=16, num_layers=2, num_gaussians=12),
    "dimenetpp": dict(
        hidden_channels=16,
        num_layers=2,
        out_emb_channels=16,
        int_emb_size=8,
        basis_emb_size=4,
        num_spherical=3,
        num_radial=4,
        num_output_layers=2,
    ),
    "egnn": dict(hidden_channels=16, num_layers=2),
    "painn": dict(hidden_channels=16, num_layers=2),
    "nequip": dict(hidden_channels=8, num_layers=2, max_ell=2),
    "mace": dict(hidden_channels=8, num_layers=2, max_ell=2, correlation=3),
    "faenet": dict(
        hidden_channels=16, num_filters=16, num_layers=2, num_gaussians=12, pg_hidden_channels=4, force_head=True
    ),  # tag embedding: tests/test_faenet.py (mixed batches here lack tags)
    "ponita": dict(
        hidden_channels=8,
        num_layers=2,
        num_ori=6,
        basis_dim=8,
        degree=2,
        widening_factor=2,
        layer_scale=0.5,
        grid="repulsion",
    ),
    "pnita": dict(hidden_channels=8, num_layers=2, basis_dim=8, degree=2, widening_factor=2, layer_scale=0.5),
}
