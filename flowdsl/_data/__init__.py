"""Data layer: workflows written as data (documents, the condition language, the document
schema), tool schemas for function calling, and the reference design's data-shaped faces."""
