import os
import subprocess
import sys


def test_batch_sharded_over_8_devices_matches_one_device():
  here = os.path.dirname(__file__)
  env = dict(os.environ, PYTHONPATH=os.path.dirname(here))
  res = subprocess.run([sys.executable, os.path.join(here, 'sharded_forward_check.py')], env=env,
                       capture_output=True, text=True, timeout=600)
  assert res.returncode == 0 and 'SHARDED_OK' in res.stdout, res.stderr[-3000:]
