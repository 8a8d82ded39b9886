"""Base layer: the error hierarchy, logging, event-loop helpers and the hooks that let a lower
layer offer a method implemented higher up. Imports nothing else of flowdsl."""
