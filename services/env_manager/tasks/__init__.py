"""ExecuteTask: one-off task containers per workload class (runner.py is the entry point).

workloads.py  the workload classes (what a task may run, with which limits) and task settings
payload.py    the request's payload parsed and checked into a TaskSpec
container.py  one task container: its engine config, running it, following an adopted one
output.py     bounded capture of a task's stdout and stderr
store.py      finished results, kept durably so no task id runs twice
runner.py     TaskRunner: the entry points (execute, cancel, capacity, reconfigure)
core.py       TaskRunner's state; launching an execution, storing its result, removing it
abandon.py    the abandon-grace watcher: stop work whose callers have all gone
recovery.py   adopting the task containers an earlier process left; shutdown
slots.py      a class's concurrency limit
warm.py       warm containers: a class's pool of started containers, each handed one job
handover.py   the stub a warm container waits in, and the quoted hand-over it reads on stdin
warm_run.py   a task run in a warm container: claim stored first, adoption after a restart
results.py    the result map of a finished run, fitted into a response
"""
