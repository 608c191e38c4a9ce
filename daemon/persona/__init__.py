"""The persona daemon: one process per persona (``personad persona ID``)."""
