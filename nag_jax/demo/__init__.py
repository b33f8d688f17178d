"""The laptop demo: NAG on scikit-learn's digits with the package's own SiT, trainer, samplers and metrics.

  python -m nag_jax.demo [--quick] [--out demo_out] [--seed 0]

Modules: `config` (full and quick presets), `classifier` (the feature network of the metrics), `models`
(SiT variants and g_phi through `nag_jax.training.loop`, branch errors), `experiment` (sampling grid,
metrics, noise-shift analysis), `report` (tables, PNGs, results.json), `findings` and `template` (the
text of report.md, computed from the measured numbers).
"""
