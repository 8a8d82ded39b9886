"""Graph layer: declare tools and compose tasks (Task, Fragment, Flow), the tool registry.

Imports only the base layer. ``@tool`` lives in the registry module, beside the default
registry it registers in.
"""
