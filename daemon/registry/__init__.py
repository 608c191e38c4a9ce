"""The persona registry: profiles, their life cycle (generate, fork, merge,
export/import, erase) and its audit log, served on the bus as ``cap:registry``.

Importing this package imports nothing heavy; each module is imported by
what needs it.
"""
