"""Accordion's data plane: batching policies, the KServe v2 worker server, the router, tools.

The configuration models (`accordion.workers.config`), the batching policies
(`accordion.workers.batching`), the router and its fast loop import no torch, so the operator
and the router image can use them without the `[torch]` extra. Model loading and execution live
in `accordion.workers.models`, which is the only module that imports torch.
"""
