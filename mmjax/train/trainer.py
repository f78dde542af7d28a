"""The training loop shared by every task: sharded init, jit-compiled step, eval, checkpoints, logging, preemption.

    state = jax.jit(create_state, out_shardings=state_shardings)(rng)              # born sharded
    step  = jax.jit(train_step, in_shardings=(state, batch), out_shardings=(state, metrics), donate_argnums=0)

A step whose loss or gradient norm is not finite never updates the state (the update is replaced by the old
state inside the step); with `config.nonfinite = "stop"` the run then stops with a clear error at the next host
sync, before any checkpoint of that step, and with "skip" it just counts it. SIGTERM (a preempted VM) saves a
checkpoint and returns; re-running with the same workdir resumes exactly, data iterator included.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmjax import configlib
from mmjax.data import pipeline
from mmjax.train import optim, sharding
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.metrics_writer import MetricsWriter
from mmjax.train.tasks import make_task
from mmjax.train.tasks.base import EvalContext, Task

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised when a step produced a non-finite loss or gradient and the config says to stop."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    model_state: Any
    ema_params: Any
    nonfinite_steps: jax.Array


class Trainer:
    """Builds everything a run needs from the config; `run()` trains to `config.total_steps`."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config, self.workdir = config, workdir
        sharding.maybe_initialize_distributed()
        os.makedirs(workdir, exist_ok=True)
        self.task: Task = make_task(config)
        self.mesh = sharding.make_mesh(config.mesh)
        self.rules = sharding.rules_from_config(config.sharding.rules)
        self.counter = pipeline.SkipCounter()
        self._stop_requested = False

    # -- construction --------------------------------------------------------------------------------------------
    def _create_state_fn(self, tx: optax.GradientTransformation, example: dict[str, np.ndarray]):
        def create(rng: jax.Array) -> TrainState:
            init_rng, state_rng = jax.random.split(rng)
            variables = dict(self.task.init(init_rng, jax.tree.map(jnp.asarray, example)))
            params = variables.pop("params")
            return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                              rng=state_rng, model_state=variables,
                              ema_params=params if self.config.ema_decay else None,
                              nonfinite_steps=jnp.zeros((), jnp.int32))
        return create

    def build(self) -> None:
        cfg = self.config
        example = self.task.example_batch(cfg.batch_size)
        self.batch_shardings = jax.tree.map(lambda _: sharding.batch_sharding(self.mesh), example)
        with self.activate():
            rng = jax.random.PRNGKey(cfg.seed)
            boxed_params = jax.eval_shape(lambda r: self.task.init(r, jax.tree.map(jnp.asarray, example)),
                                          rng)["params"]
            paths = [optim.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(boxed_params)[0]]
            self.tx, self.lr_schedule = optim.make_optimizer(cfg.optim, paths, cfg.total_steps)
            create = self._create_state_fn(self.tx, example)
            abstract = jax.eval_shape(create, rng)
            self.state_shardings = sharding.logical_shardings(abstract, self.mesh, self.rules)
            self.abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                               sharding.strip_boxes(abstract), self.state_shardings)
            self._init = jax.jit(lambda r: sharding.strip_boxes(create(r)), out_shardings=self.state_shardings)
            self._rng = rng
            metric_sharding = sharding.replicated(self.mesh)
            self._step = jax.jit(self._train_step, in_shardings=(self.state_shardings, self.batch_shardings),
                                 out_shardings=(self.state_shardings, metric_sharding), donate_argnums=0)
        self.num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sharding.strip_boxes(boxed_params)))

    def activate(self):
        """The mesh and the logical rule table, active together for tracing."""
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    # -- the step -----------------------------------------------------------------------------------------------
    def _train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(self.task.loss_fn, has_aux=True)
        (loss, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch, rng)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        ema = state.ema_params
        if ema is not None:
            d = self.config.ema_decay
            ema = keep(jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params), ema)
        new_state = state.replace(
            step=state.step + 1, params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
            model_state=keep(model_state, state.model_state), ema_params=ema,
            nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "lr": self.lr_schedule(state.step)}
        return new_state, metrics

    # -- the loop -----------------------------------------------------------------------------------------------
    def _check_finite(self, state: TrainState) -> None:
        bad = int(jax.device_get(state.nonfinite_steps))
        if bad and self.config.nonfinite == "stop":
            raise NonFiniteLossError(
                f"non-finite loss or gradient in {bad} step(s) before step {int(state.step)}; the state was not "
                f"updated by them and is not checkpointed. Lower config.optim.lr or set config.nonfinite='skip'.")

    def evaluate(self, state: TrainState, step: int, final: bool) -> dict[str, float]:
        ctx = EvalContext(self.mesh, self.config.eval_batch_size or self.config.batch_size, self.counter,
                          self.workdir, step, final)
        params = state.ema_params if state.ema_params is not None else state.params
        with self.activate():
            return self.task.evaluate(params, state.model_state, ctx)

    def _on_sigterm(self, *_: Any) -> None:
        log.warning("SIGTERM received: saving a checkpoint and stopping")
        self._stop_requested = True

    def run(self) -> dict[str, Any]:
        cfg = self.config
        self.build()
        configlib.write_json(cfg, os.path.join(self.workdir, "config.json"))
        data = pipeline.train_dataset(self.task.source("train"), self.task.preprocess,
                                      global_batch_size=cfg.batch_size, seed=cfg.seed, counter=self.counter,
                                      worker_count=cfg.data_workers)
        data_iter = iter(data)
        ckpt = Checkpointer(os.path.join(self.workdir, "checkpoints"), save_every=cfg.checkpoint_every,
                            keep=cfg.keep_checkpoints)
        restored = ckpt.restore(self.abstract_state, data_iter)
        if restored is None:
            state, start = self._init(self._rng), 0
            pretrained = self.task.pretrained_variables()
            if pretrained:
                state = insert_pretrained(state, pretrained)
        else:
            state, start = restored
            log.info("resumed from %s at step %d", ckpt.directory, start)
        writer = MetricsWriter(self.workdir, cfg.total_steps, initial_step=start)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        config_dict = configlib.to_dict(cfg)
        pending: list[dict] = []
        t0, step = time.perf_counter(), start
        try:
            while step < cfg.total_steps and not self._stop_requested:
                batch = sharding.global_batch(next(data_iter), self.mesh)
                with self.activate():
                    state, metrics = self._step(state, batch)
                step += 1
                pending.append(metrics)
                writer.advance()
                if step % cfg.log_every == 0 or step == cfg.total_steps:
                    self._check_finite(state)
                    means = {k: float(np.mean([jax.device_get(m[k]) for m in pending])) for k in pending[0]}
                    dt = time.perf_counter() - t0
                    means.update(examples_per_sec=len(pending) * cfg.batch_size / dt,
                                 steps_per_sec=len(pending) / dt, skipped_records=self.counter.total)
                    writer.write(step, "train", means)
                    pending, t0 = [], time.perf_counter()
                if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.total_steps:
                    writer.write(step, "eval", self.evaluate(state, step, final=False))
                if step % cfg.checkpoint_every == 0:
                    self._check_finite(state)
                    ckpt.save(step, state, data_iter, config_dict)
            self._check_finite(state)
            if step not in ckpt.steps():
                ckpt.save(step, state, data_iter, config_dict, force=True)
            if self._stop_requested:
                ckpt.wait()
                return {"step": step, "preempted": True}
            final = writer.write(step, "eval", self.evaluate(state, step, final=True), final=True)
            self.state = state
            return final
        finally:
            signal.signal(signal.SIGTERM, previous)
            ckpt.close()
            writer.close()


def _insert(tree: Any, loaded: Any, where: str) -> Any:
    if isinstance(loaded, dict):
        if not isinstance(tree, dict):
            raise ValueError(f"pretrained weights: {where} is a leaf in the model, a subtree in the weights")
        unknown = sorted(set(loaded) - set(tree))
        if unknown:
            raise ValueError(f"pretrained weights: {where}/ has no {unknown}; model has {sorted(tree)}")
        return {k: _insert(tree[k], loaded[k], f"{where}/{k}") if k in loaded else v for k, v in tree.items()}
    if tuple(np.shape(loaded)) != tuple(tree.shape):
        raise ValueError(f"pretrained weights: {where} has shape {np.shape(loaded)}, the model {tree.shape}")
    return jax.device_put(np.asarray(loaded, dtype=tree.dtype), tree.sharding)


def insert_pretrained(state: TrainState, loaded: dict[str, Any]) -> TrainState:
    """Replaces parts of a freshly initialised state with loaded weights, keeping each array's sharding."""
    loaded = dict(loaded)
    params = _insert(state.params, loaded.pop("params"), "params") if "params" in loaded else state.params
    model_state = _insert(state.model_state, loaded, "") if loaded else state.model_state
    ema = params if state.ema_params is not None else None
    return state.replace(params=params, model_state=model_state, ema_params=ema)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) the run in `workdir`; returns the final evaluation record."""
    return Trainer(config, workdir).run()
