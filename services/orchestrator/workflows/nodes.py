"""What each typed node does when its step runs (pure: the engine applies it).

  signature   a task of the class its `execution_domain` implies (gpu, cuda, accelerated:
              `gpu`; anything else: `cpu_short`). Payload: the config's keys (strings as they
              are, other values as JSON), then `workflow_id`, `workflow_run_id`, `node_id`,
              `input` (the run's input, JSON), `workflow_context` (JSON: the workflow and run,
              and each parent node's status and result) and `step_kind` = "signature". It has no
              `command`: the class's handler runs it (a class without one refuses it).
  verifier    a `cpu_short` task running `command` (text through /bin/sh -c, or an argv), with
              the workflow context as JSON on stdin and WORKFLOW_ID, WORKFLOW_RUN_ID and NODE_ID
              in its environment; `timeout_sec` is the task's timeout. With `success_signal`
              set, the step succeeds only if that text appears in the task's stdout.
  training    a `gpu_slurm` task (a Slurm job): `command` from the node's config, else
              `[slurm] training_command`; the config, input and context as JSON on stdin and
              TRAINING_METHOD, TRAINING_SKILL, WORKFLOW_ID, WORKFLOW_RUN_ID, NODE_ID in its
              environment.
  reward, deployment, custom
              no task: the step succeeds at once with its config as result (values as in a
              signature payload); reward and deployment also publish `workflow_reward` /
              `workflow_deployment` with the config.

A typed node's task id is `<run id>-<node id>` as in the original (steps of the steps form keep
`<run id>:<step id>`). Run ids are `run-` + 32 random hex digits, so no task id of a step can
be known, or taken, before its run starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent_infra.runtime.errors import FailedPrecondition

from . import templating
from .spec import StepSpec

RESERVED = ("workflow_id", "workflow_run_id", "node_id", "input", "workflow_context",
            "step_kind")
INLINE_EVENTS = {"reward": "workflow_reward", "deployment": "workflow_deployment"}


def task_id(run_id: str, step: StepSpec) -> str:
    separator = ":" if step.kind == "task" else "-"
    return f"{run_id}{separator}{step.id}"


def flatten(config: Mapping[str, Any]) -> dict[str, str]:
    """A config as a string map: strings as they are, any other value as JSON."""
    return {key: value if isinstance(value, str) else templating.encode_json(value)
            for key, value in config.items()}


def context(workflow_id: str, workflow_name: str, run_id: str, step: StepSpec,
            parents: Mapping[str, tuple[str, Mapping[str, str]]]) -> dict[str, Any]:
    return {"workflow_id": workflow_id, "workflow_name": workflow_name,
            "workflow_run_id": run_id, "node_id": step.id, "node_type": step.kind,
            "parents": {parent: {"status": status, "result": dict(result)}
                        for parent, (status, result) in sorted(parents.items())}}


def payload(step: StepSpec, *, workflow_id: str, run_id: str, run_input: Any,
            workflow_context: Mapping[str, Any], training_command: Sequence[str] = ()
            ) -> dict[str, str]:
    """The payload of a typed node's task (signature, verifier, training)."""
    config = step.config_object
    ids = {"WORKFLOW_ID": workflow_id, "WORKFLOW_RUN_ID": run_id, "NODE_ID": step.id}
    if step.kind == "signature":
        out = {key: value for key, value in flatten(config).items() if key not in RESERVED}
        out.update({
            "workflow_id": workflow_id, "workflow_run_id": run_id, "node_id": step.id,
            "input": templating.encode_json(run_input),
            "workflow_context": templating.encode_json(workflow_context),
            "step_kind": "signature"})
        return out
    if step.kind == "verifier":
        return {"command": _command(config["command"]), "env": templating.encode_json(ids),
                "stdin": templating.encode_json(workflow_context)}
    if step.kind == "training":
        command = config.get("command") or list(training_command)
        if not command:
            raise FailedPrecondition(training_command_missing(step.id))
        env = {**ids, "TRAINING_METHOD": str(config.get("method", "")),
               "TRAINING_SKILL": str(config.get("skill", ""))}
        return {"command": _command(command), "env": templating.encode_json(env),
                "stdin": templating.encode_json({"config": config, "input": run_input,
                                                 "workflow_context": workflow_context})}
    raise ValueError(f"a {step.kind} node runs no task")


def training_command_missing(node_id: str) -> str:
    return (f"node '{node_id}': a training node needs training.command, or [slurm] "
            "training_command in the orchestrator's config, to know what to run on Slurm")


def _command(value: Any) -> str:
    return value if isinstance(value, str) else templating.encode_json(list(value))


def inline_result(step: StepSpec) -> dict[str, str]:
    """The result of a node that runs no task (reward, deployment, custom): its config."""
    return flatten(step.config_object)


def outcome_error(step: StepSpec, result: Mapping[str, str]) -> str:
    """Why a completed task still fails its step ('' when it does not): a verifier's
    success_signal missing from stdout."""
    if step.kind != "verifier":
        return ""
    signal = step.config_object.get("success_signal") or ""
    if signal and signal not in result.get("stdout", ""):
        return f"verifier '{step.id}': success_signal {signal[:200]!r} not found in stdout"
    return ""
