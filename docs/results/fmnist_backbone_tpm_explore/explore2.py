import sys
import explore_tpm as E
V = [
  ('tok+size d1', 'tpm:{k}@similarity=tokens@weight=size@distinct=1', {}),
  ('tok+size d0.5', 'tpm:{k}@similarity=tokens@weight=size@distinct=0.5', {}),
  ('tok+size d2', 'tpm:{k}@similarity=tokens@weight=size@distinct=2', {}),
  ('tok+size d4', 'tpm:{k}@similarity=tokens@weight=size@distinct=4', {}),
  ('keys+imp d1', 'tpm:{k}@distinct=1', {}),
  ('tok+imp d1', 'tpm:{k}@similarity=tokens@distinct=1', {}),
  ('keys+size d1', 'tpm:{k}@weight=size@distinct=1', {}),
  ('tok+size d1 noprop', 'tpm:{k}@similarity=tokens@weight=size@distinct=1@prop_attn=off', {}),
]
if __name__ == '__main__':
  E.main('../docs/results/fmnist_backbone', [0.7, 0.5], V)
