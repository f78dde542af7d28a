"""A state moves between meshes: a run checkpointed on 4 devices restores onto 2 and continues with the same loss.
`bench.scaling.equivalence` (FSDP over N devices computes what one device computes) is the same check as
tests/train/test_trainer.py::test_fsdp4_data2_on_8_devices_matches_single_device, so it runs only with `-m slow`.

Run on 4 forced CPU devices in a subprocess (the device count is fixed when jax starts)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    from mmjax.bench import scaling
    spec, over = "configs/vit/digits.py", ["model.variant=Ti/4", "optim.warmup_steps=0"]
    eq = scaling.equivalence(spec, over, n=4, steps=2, per_device_batch=2) if sys.argv[2] == "1" else None
    moved = scaling.restore_across_meshes(spec, over, n_from=4, n_to=2, directory=sys.argv[1], per_device_batch=1)
    print("RESULT", json.dumps({"eq": eq, "moved": moved}))
""")


def run_on_4_devices(directory, equivalence: bool) -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(directory), "1" if equivalence else "0"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.split("RESULT ", 1)[1])


def test_a_state_saved_on_4_devices_restores_onto_2_with_the_same_loss(tmp_path):
    moved = run_on_4_devices(tmp_path, equivalence=False)["moved"]
    assert abs(moved["loss_on_4"] - moved["loss_restored_on_2"]) < 1e-5 * max(1.0, abs(moved["loss_on_4"]))


@pytest.mark.slow
def test_fsdp_over_4_devices_equals_one_device(tmp_path):
    eq = run_on_4_devices(tmp_path, equivalence=True)["eq"]
    one, four = eq["one_device"], eq["4_devices"]
    assert len(one) == 2 and one[0] != one[1]  # the model learns between the steps: not a constant
    for a, b in zip(one, four):
        assert abs(a - b) < 1e-5 * max(1.0, abs(a))
