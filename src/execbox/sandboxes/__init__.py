"""Persistent sandboxes (issue 6): long-lived workspaces with files, commands,
background processes, preview URLs, expiry and builds, on the sandbox engine's
long-lived sessions (execbox.engine.session)."""
