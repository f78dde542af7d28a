"""Session settings for the test suite.

Almost every test runs a tiny model for a few steps, so its time is XLA compiling, not running. The CPU backend
at optimisation level 0 without LLVM's expensive passes compiles such programs about twice as fast and runs them
a little slower; numerics are the same (every parity test passes at its tolerance either way). The flags go into
the environment before anything imports jax, so the subprocesses the tests start inherit them
(`tests.helpers.subprocess_env` appends device counts to them). `MMJAX_TEST_XLA_OPT=1` keeps XLA's defaults.
"""

from __future__ import annotations

import os

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

if os.environ.get("MMJAX_TEST_XLA_OPT") != "1":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
