"""Workers: the pool that takes jobs from the queue (the same code in ``serve`` and in
``execbox worker``), the registry of live workers, and the upkeep of leases."""
