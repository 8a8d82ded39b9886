"""Graph layer: declare tools and compose tasks (Task, Fragment, Flow), the tool registry.

Imports only the base layer. Importing the package imports the registry, which sets the default
registry that ``@tool`` registers in.
"""

from . import registry as _registry  # noqa: F401 (wires the default registry into @tool)
