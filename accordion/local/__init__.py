"""Local mode: the whole system on one machine (`accordion up`).

The same control loop as the operator (`accordion.operator.control.loop`) plans and re-plans;
a process actuator (`actuator`) starts and stops worker processes on loopback instead of
Deployments and writes each router's routing-table file instead of a ConfigMap. `runtime`
drives the loop from the routers' own demand counters, `view` draws it live, `cli` is the
`accordion up` command and `demo` the `make demo` driver.
"""
