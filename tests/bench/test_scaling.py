"""Sharding over several devices computes what one device computes, and a state moves between meshes.

Run on 4 forced CPU devices in a subprocess (the device count is fixed when jax starts)."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys
    from mmjax.bench import scaling
    spec, over = "configs/vit/digits.py", ["model.variant=Ti/4", "optim.warmup_steps=0"]
    eq = scaling.equivalence(spec, over, n=4, steps=2, per_device_batch=2)
    moved = scaling.restore_across_meshes(spec, over, n_from=4, n_to=2, directory=sys.argv[1], per_device_batch=1)
    print("RESULT", json.dumps({"eq": eq, "moved": moved}))
""")


def test_fsdp_over_4_devices_equals_one_device_and_restores_onto_2(tmp_path):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    one, four = out["eq"]["one_device"], out["eq"]["4_devices"]
    assert len(one) == 2 and one[0] != one[1]  # the model learns between the steps: not a constant
    for a, b in zip(one, four):
        assert abs(a - b) < 1e-5 * max(1.0, abs(a))
    moved = out["moved"]
    assert abs(moved["loss_on_4"] - moved["loss_restored_on_2"]) < 1e-5 * max(1.0, abs(moved["loss_on_4"]))
