"""Runtime decision state: what the pipeline reads and the commit persists.

Not policy (the rules, as data) and not a stage (a step of the pipeline): the state the
stages read (:class:`~gateway.state.snapshot.StateSnapshot`) and the change they return
(:class:`~gateway.state.snapshot.StateDelta`), kept per vehicle as columns
(:mod:`gateway.state.vehicles`).
"""
