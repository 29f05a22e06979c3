"""ExecuteTask: one-off task containers per workload class (runner.py is the entry point).

workloads.py  the workload classes (what a task may run, with which limits) and task settings
payload.py    the request's payload parsed and checked into a TaskSpec
container.py  one task container: its engine config, running it, following an adopted one
output.py     bounded capture of a task's stdout and stderr
store.py      finished results, kept durably so no task id runs twice
runner.py     TaskRunner: slots per class, once-per-id executions, cancel, recovery
"""
