"""PyTorch interop: HMR 2.0 / HaMeR / ViTPose checkpoints in, HMR 2.0 / HaMeR checkpoints out.

  keymap.py       the key tables (PyTorch key <-> Flax path, shapes, rule) and the strict
                  converters that apply them
  from_torch.py   import: python -m extpose_jax.convert.from_torch --ckpt P --kind K --out DIR
  to_torch.py     export: python -m extpose_jax.convert.to_torch --workdir DIR --out P
  torch_model.py  the model re-written in PyTorch (same masks), for running exported weights

See docs/convert.md. Importing this package imports neither torch nor the training stack.
"""
