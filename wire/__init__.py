"""The wire protocol shared by the aggregation server, the key holder and the client agents.

One module of typed messages so both ends agree by construction (docs/architecture.md).
"""
