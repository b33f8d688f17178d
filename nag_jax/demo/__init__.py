"""The laptop demo: NAG on scikit-learn's digits with the package's own SiT, trainer, samplers and metrics.

  python -m nag_jax.demo [--quick] [--out demo_out] [--seed 0]

Modules: `config` (the full and quick presets), `classifier` (the feature network of the metrics),
`models` (SiT variants and g_phi through `nag_jax.training.loop`, branch errors), `experiment` (the
sampling grid, metrics, noise-shift analysis), `report` (report.md, PNG grids, headline table).
"""
