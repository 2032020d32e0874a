"""Every Redis key name the service uses, in one place (serving.md "Redis layout").

| key | type | content |
|---|---|---|
| {prefix}:jobs:{model} | stream, group `workers` | one entry per job of that model: id, cost (tiles), deadline |
| {prefix}:job:{id} | hash | params, status, attempts, error, api instance, entry id, times |
| {prefix}:in:{id} / {prefix}:out:{id} | string | encoded input / result bytes, with TTLs |
| {prefix}:reply:{api} | stream | completion notices for one API replica (a wake-up; the hash is the truth) |
| {prefix}:idem:{key} | string | job id for an Idempotency-Key |
| {prefix}:backlog | int | outstanding tiles (admit adds, every terminal transition subtracts, atomically) |
| {prefix}:dead | stream | poison jobs after max attempts |
| {prefix}:workers | hash | `{worker}/{model}` -> JSON heartbeat (time, ready, tiles/s, dtype, model) |
| {prefix}:store | sorted set | job ids of stored results, scored by completion time (eviction order) |
| {prefix}:store:sizes / :bytes / :cap | hash / int / int | result sizes, their sum, the cap in bytes |
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "rsd"

    def jobs(self, model: str) -> str:
        """One stream per served model: a worker reads only its models' streams (serving.md "Models")."""
        return f"{self.prefix}:jobs:{model}"

    @property
    def backlog(self) -> str:
        return f"{self.prefix}:backlog"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def store(self) -> str:
        return f"{self.prefix}:store"

    @property
    def store_sizes(self) -> str:
        return f"{self.prefix}:store:sizes"

    @property
    def store_bytes(self) -> str:
        return f"{self.prefix}:store:bytes"

    @property
    def store_cap(self) -> str:
        return f"{self.prefix}:store:cap"

    def store_keys(self) -> list[str]:
        """KEYS of the result-store scripts, in their order."""
        return [self.store, self.store_sizes, self.store_bytes, self.store_cap]

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def input(self, job_id: str) -> str:
        return f"{self.prefix}:in:{job_id}"

    def output(self, job_id: str) -> str:
        return f"{self.prefix}:out:{job_id}"

    def reply(self, api: str) -> str:
        return f"{self.prefix}:reply:{api}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"
