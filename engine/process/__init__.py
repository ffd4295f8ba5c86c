"""The engine core in a child process: the client the trio actor drives (`core_client`), the
child's loop (`core_process`), the frames between them (`wire`), the actor's side of the
process loop (`actor_process`), how deltas reach request channels (`stream_router`), and the
serving profile logged on stop (`step_profile`)."""
