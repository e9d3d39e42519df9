"""The HTTP API: thin; validates, submits, waits or streams."""
