"""Job transports behind one interface (serving.md "Queue: one interface, two transports").

`inprocess` (embedded default) and `redis` (API side) / `redis_worker` (worker side) implement
`base.ApiQueue` / `base.WorkerQueue`. Key names live in `keys`, the atomic Lua scripts in `scripts`.
"""
