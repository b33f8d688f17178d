"""The text of report.md around the tables and figures that `report` builds."""
from __future__ import annotations

from nag_jax.demo import findings
from nag_jax.demo.config import DemoConfig, run_name


def markdown(results: dict, dc: DemoConfig, *, command: str, headline: str, details: str, variants: str,
             branches: str, shift: str, sample_files: dict, loss_file: str, shift_dir: str) -> str:
  """The whole report.md."""
  t, c, m = results["timing"], results["classifier"], results["models"]["main"]
  total = results["total"]
  bullets = lambda xs: "\n".join(f"- {x}" for x in xs)
  timing = "\n".join(f"| {k} | {s['wall_s']:.0f} | {s['cpu_s']:.0f} |" for k, s in t.items())
  pics = "\n\n".join(f"**{title}**\n\n![{title}]({f})" for title, f in sample_files.items())
  return f"""# NAG on scikit-learn digits: demo report

`{command}` (seed {dc.seed}): {total['wall_s'] / 60:.1f} min wall, {total['cpu_s'] / 60:.1f} min CPU of this
process (all threads) on {results['machine']['cpus']} CPU cores (1-minute load average at the end:
{results['machine']['load_avg']:.1f}). Everything below was measured in this run.

## Headline: Fréchet distance (CNN features, lower is better), main model

{headline}

## What the numbers show

NAG alone (w in {{1, 2}}) against the unguided sampler at the same steps:

{bullets(findings.nag_bullets(results, dc))}

CFG and NAG + CFG:

{bullets(findings.cfg_bullets(results, dc))}

The same samples in two feature spaces:

{bullets(findings.feature_bullets(results, dc))}

Time scaling and noise-condition dropout ({run_name(*dc.variant_runs[0])}):

{bullets(findings.variant_bullets(results, dc))}

Noise shift (SDE {dc.shift_steps} steps, {next(iter(results['noise_shift'].values()))['num_samples']} samples):

{bullets(findings.shift_bullets(results))}

{findings.READ}

## Setup

- Data: the 1,797 8x8 digits of scikit-learn, upsampled to {dc.image_size}x{dc.image_size} by pixel repetition, in [-1, 1].
- Model: `nag_jax` SiT (linear path, velocity loss), patch {dc.patch_size}, width {dc.hidden_size}, depth {dc.depth},
  {dc.num_heads} heads, {m['params']:,} parameters; trained by `nag_jax.training.loop.train` for {dc.train_steps} steps,
  batch {dc.batch_size}, AdamW {dc.learning_rate:g} ({dc.warmup_steps} warm-up steps), EMA {dc.ema_decay}, label dropout
  {dc.label_dropout} (CFG), noise-condition dropout to the pseudo level {dc.pseudo_level} (NAG).
- Samplers (`build_sampler`, one compile per configuration): SDE = Euler-Maruyama with SiT's defaults
  (w_t = sigma_t, last "Mean" step of 0.04), N grid points; ODE = Euler on N grid points (N - 1 steps).
  Seed i fixes the initial noise and the SDE noises of every setting; labels cycle 0..9.
- Metrics: a small CNN classifier trained on {c['train_size']} real digits, held-out accuracy
  **{c['test_accuracy']:.3f}** on {c['test_size']}; FD on its {c['feature_dim']}-d feature layer against all real digits
  (the headline); precision / recall (k = 3) in the same features; class accuracy = the CNN agrees with the
  sampled label. A second FD uses the {c['feature_dim']}-d features of an MLP classifier (held-out accuracy
  {c['test_accuracy_mlp']:.3f}).
- g_phi: the main model's backbone with a noise-level head, fine-tuned {dc.gphi_steps} steps (`mode="noise_estimator"`).

## All metrics (main model)

{details}

## Time scaling: which setting learns a usable noise-unconditional branch

SiT feeds t in [0, 1] to the sinusoidal embedding unscaled, so the pseudo level 1.001 embeds almost like
t = 1 (data). `ModelConfig.time_scale` multiplies t first; 1000 makes 1.001 embed like 1001 (DiT-style).
Each model below has the same initialisation, data order and draws; only the time scale or the dropout differs.

{variants}

Per SiT time t (1 = data), on forward states of 512 real digits: velocity MSE of the conditional branch
(t given) / of the pseudo-level branch / mean squared gap between the two outputs (what NAG amplifies):

{branches}

## Noise shift (g_phi)

Estimated noise fraction nu (1 = noise) of states at prior level nu: forward states of real digits
(g_phi's own error) and sampled states; shift = estimate - prior, and vs the forward estimate. The plots
show the first NAG weight; `{shift_dir}/..` holds the CSV and JSON of every weight.

{shift}

![densities]({shift_dir}/densities.png)

![shift vs t]({shift_dir}/shift_curves.png)

## Samples (same seed and labels in every panel)

{pics}

## Training loss

![loss]({loss_file})

## Timing (this process; CPU seconds count all threads)

| stage | wall s | CPU s |
|---|---|---|
{timing}
"""
