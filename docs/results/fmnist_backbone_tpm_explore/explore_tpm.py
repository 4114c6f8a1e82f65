"""Off-the-shelf exploration of tpm selection variants on the Fashion-MNIST backbone (scratch)."""
import functools, json, sys, time
import jax, jax.numpy as jnp
from tpm_jax import evaluation, reduction as reduction_lib
from tpm_jax.reduction import tpm as tpm_mod
from tpm_jax.reduction.common import gather, unit
from tpm_jax.reduction_setting import parse_setting
from tpm_jax.models.registry import with_weights_of

ORIG = tpm_mod.reduce

def variant(x, scores, metric, sizes, *, num_protected, k, cfg, sel='cls', gamma=1.0, lam=1.0):
  P = num_protected
  if sel != 'cls':
    m = unit(metric[:, P:])
    sim = jnp.einsum('bic,bjc->bij', m, m)
    M = sim.shape[1]
    sim = jnp.where(jnp.eye(M, dtype=bool)[None], -jnp.inf, sim)
    smax = jnp.clip(sim.max(-1), -1.0, 1.0)
    a = scores[:, P:].astype(jnp.float32)
    if sel == 'mul':
      new = a * jnp.clip(1 - smax, 1e-6) ** gamma
    elif sel == 'add':
      an = a / a.mean(-1, keepdims=True)
      new = lam * an + (1 - smax) / jnp.clip((1 - smax).mean(-1, keepdims=True), 1e-6)
    elif sel == 'persize':
      new = a / sizes[:, P:]
    scores = jnp.concatenate([scores[:, :P], new.astype(scores.dtype)], 1)
  return ORIG(x, scores, metric, sizes, num_protected=num_protected, k=k, cfg=cfg)

def main(ckpt, keeps, variants):
  model0, run, _ = evaluation.load_trained(ckpt)
  dataset = evaluation.eval_dataset(run, 'test')
  out = []
  for keep in keeps:
    for name, setting, opts in variants:
      reduction_lib.METHODS['tpm'] = functools.partial(variant, **opts) if opts else ORIG
      config = parse_setting(setting.format(k=keep)).apply(run)
      model, fresh, left = with_weights_of(model0, config)
      t = time.time()
      m = evaluation.evaluate_model(model, config, dataset, 'test')
      row = dict(keep=keep, name=name, setting=setting.format(k=keep), top1=round(100 * float(m['eval_top1']), 2), secs=round(time.time() - t, 1))
      print(json.dumps(row), flush=True)
      out.append(row)
  return out

if __name__ == '__main__':
  V = [
    ('defaults', 'tpm:{k}', {}),
    ('tok+size', 'tpm:{k}@similarity=tokens@weight=size', {}),
    ('mul tok+size', 'tpm:{k}@similarity=tokens@weight=size', dict(sel='mul')),
    ('mul^.5 tok+size', 'tpm:{k}@similarity=tokens@weight=size', dict(sel='mul', gamma=0.5)),
    ('mul^2 tok+size', 'tpm:{k}@similarity=tokens@weight=size', dict(sel='mul', gamma=2.0)),
    ('add tok+size', 'tpm:{k}@similarity=tokens@weight=size', dict(sel='add')),
    ('mul keys+size', 'tpm:{k}@weight=size', dict(sel='mul')),
    ('persize tok+size', 'tpm:{k}@similarity=tokens@weight=size', dict(sel='persize')),
    ('tome', 'tome:{k}', {}),
  ]
  keeps = [float(v) for v in sys.argv[2].split(',')] if len(sys.argv) > 2 else [0.7, 0.5]
  main(sys.argv[1], keeps, V)
