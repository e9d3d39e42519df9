"""Jobs: the persisted record of an execution, its state machine, and the one function
that runs a job from claim to recorded outcome (execution.py), for every front door."""
