"""The Slurm executor: gpu_slurm tasks as batch jobs, sbatch then squeue/scontrol polling.

One execution is one batch job, submitted at most once. Its files live in the work dir under a
hash of the execution id (the id itself never names a file, a job or reaches a shell): the job
script, its stdout/stderr, the job id recorded after sbatch answered, and an exit record the
script writes when the command ends. A re-dispatch of the same execution (a transient failure,
an orchestrator restart) attaches to the job instead of submitting a second one: first through
the recorded job id, then, if the orchestrator died between sbatch and that record, through
`squeue --name` (the job name carries the hash).

Payload keys (all optional but command; any other key is refused as INVALID_ARGUMENT):

  command  a JSON array of strings, run as that argv; or any other text, run by `/bin/sh -c`
  env      a JSON object of strings, exported to the command
  stdin    text given to the command on its standard input
  workdir  an absolute path on the compute node to run in
  gpus     a whole number of GPUs to ask for (`--gres=gpu:N`)

The job runs with `--export=NONE` (the orchestrator's environment, secrets included, stays out
of it; Slurm sets up the user's own login environment) and `--no-requeue` (Slurm must not run a
command a second time by itself). Timeouts are enforced in seconds inside the job (coreutils
`timeout`), with Slurm's `--time` in whole minutes one minute later as the backstop. Time spent
queued is bounded too: a job still PENDING `slurm.pending_timeout` after sbatch (by default the
task's own timeout, but at least PENDING_FLOOR_S: even an idle cluster takes seconds to start a
job) is cancelled (only while still pending, so a job that has just started runs on) and its
task fails as never started.

States come from squeue while the job is active, then from `scontrol show job` (kept by slurmctld
for MinJobAge after the end, with no accounting database needed), then from sacct when the
cluster has accounting, and at last from the job's own exit record.

Result map (all strings): job_id, state (Slurm's job state), exit_code, signal, stdout, stderr
(each the first output_limit_bytes) with stdout_truncated/stderr_truncated and
stdout_bytes/stderr_bytes, duration_ms, timed_out, timeout_s; never_started ("true") when it was
cancelled for staying pending. success is true only for COMPLETED with exit code 0.

The settings can change while the executor runs (`reconfigure`, on SIGHUP): each command and
poll reads the current ones, so new jobs take a new partition or sbatch_args and the jobs being
followed carry on under the new poll interval, command paths and limits.

Modules: `payload` (the payload, parsed), `submission` (the job's name, script and sbatch line),
`job_files` (the files in the work dir), `job_state` (squeue/scontrol/sacct output, parsed),
`outcome` (a job's end as the task's outcome): all pure or plain file access; `executor` runs the
commands and follows the jobs.
"""
