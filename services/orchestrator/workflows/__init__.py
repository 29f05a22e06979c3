"""Workflows: DAGs of steps, each step a task, and their runs.

`spec` parses and validates what a caller sends (with `templating` for payload references);
`logic` decides, from the steps' states alone, what a run does next; `records` are workflows and
runs as stored, read back from their rows; `repository` makes every change to them, one
transaction each; `engine` submits ready steps as tasks and moves runs on as the tasks end.
"""
