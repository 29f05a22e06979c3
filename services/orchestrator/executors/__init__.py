"""What runs a task once the scheduler dispatches it.

`protocol` is the contract (Execution in, ExecutionOutcome or TransientFailure out); `routing`
picks the executor that owns each class and builds the daemon's from its settings;
`env_manager` runs tasks on env-manager's ExecuteTask, `slurm` as Slurm batch jobs, and
`in_process` as coroutines (for tests and benchmarks).
"""
