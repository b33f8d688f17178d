"""Evaluation of generated samples; the metrics follow ADM's evaluator protocol.

Metric modules: `inception` (FID InceptionV3 in Flax), `inception_convert` (pytorch-fid weights),
`features` (sharded batched extraction with any feature function), `fid` (Fréchet distance,
Inception Score), `precision_recall` (k-NN manifolds), `sample_io` (ADM .npz / image folders).
"""
