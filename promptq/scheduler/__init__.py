"""Routing, priorities, micro-batch dispatch, and the periodic sweeper."""
