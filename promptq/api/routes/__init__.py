"""Thin route modules: parse, call the domain module, shape the response."""
