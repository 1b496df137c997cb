"""``mplogin bench``: throughput and latency of bare RPC, the login pipeline and an inline baseline.

One invocation starts its own stack (MongoDB stand-in, sandbox, gateway, workers and an inline
login server, each a separate process with a unique queue prefix and database) on the shared
RabbitMQ, then drives three configurations:

* ``a`` bare RPC echo: ``RpcClient.call("echo")`` from this process to the same workers;
* ``b`` the full pipeline: ``POST /v1/login`` to the gateway, through the broker, to a worker;
* ``c`` the inline baseline: one aiohttp process calling ``LoginService.login`` in its handler.

Each runs closed loop at a few concurrency levels, then open loop at fractions of the best
closed-loop throughput with latency timed from the intended send time; ``b`` and ``c`` run with
the sandbox answering at once and with added platform latency. ``python -m mplogin.bench inline``
is the inline server; ``python -m mplogin.bench [options]`` runs the benchmark itself.
"""

