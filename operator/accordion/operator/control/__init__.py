"""The control loop shared by the operator, local mode and the simulator.

It knows no kopf and no Kubernetes client: from a world view and a demand estimate it computes
the plan, the desired state and the steps to reach it; drivers (kopf handlers, the local
process supervisor, the simulator) feed it and carry its steps out.
"""
