"""Checkpoint I/O: lazy header-first reading and streaming, atomic, sharded writing."""
