"""Training, sweeps, export and eval import no TensorFlow: Grain reads the TFDS data source (ArrayRecord)
and TensorBoard's own writer writes the events. Checked in every process of a real run (a
``sitecustomize`` reports ``sys.modules`` at exit); TensorFlow is only for preparing a dataset."""
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sweep_train_export_and_eval_import_no_tensorflow(tmp_path, tiny_imagenet, tensorflow_report):
  env, read = tensorflow_report
  config = os.path.join(ROOT, 'configs/deit.py') + ':smoke'
  run = lambda *args: subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                                     timeout=600)
  res = run('-m', 'tpm_jax.sweep', '--config', config, '--sweep', 'method=tpm', '--workdir', str(tmp_path / 'sweep'),
            '--throughput_batch', '4', f'--config.dataset.data_dir={tiny_imagenet}', '--config.total_steps=2',
            '--config.log_every_steps=2', '--config.eval_every_steps=2')
  assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
  workdir = tmp_path / 'sweep' / 'runs' / 'method-tpm'
  res = run('-m', 'tpm_jax.export', '--workdir', str(workdir), '--output', str(tmp_path / 'export'))
  assert res.returncode == 0, res.stderr[-2000:]
  res = run('eval.py', '--checkpoint', str(tmp_path / 'export'), '--config', config,
            f'--config.dataset.data_dir={tiny_imagenet}', '--batch_size', '4', '--timed_runs', '1')
  assert res.returncode == 0, res.stderr[-2000:]
  processes = read()
  assert [p for p, _ in processes if 'train.py' in p], processes  # the sweep's training process reported
  assert len(processes) >= 4 and not any(imported for _, imported in processes), processes
  # the run's TensorBoard events, written without TensorFlow, read back by TensorBoard
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(glob.glob(str(workdir / 'tensorboard' / 'events.out.tfevents.*'))[0])
  events.Reload()
  assert {'loss', 'eval_top1', 'learning_rate'} <= set(events.Tags()['scalars'])
  assert [e.step for e in events.Scalars('loss')] == [2]
