"""Property-based fuzzing of both daemons over the wire (gRPC and HTTP), with hypothesis.

Everything here talks to real daemons through agent_infra.wire's descriptors, grpc.health.v1
and plain HTTP: never through the daemons' own modules, so it survives any refactoring of them.
`strategies` builds requests for every RPC the descriptors list; `harness` runs them against
running daemons and classifies what comes back.
"""
