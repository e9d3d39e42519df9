"""Constants shared by the persistent-sandbox tests and their fixtures (a module of its
own: `conftest` names several modules in this suite, so it cannot be imported by name)."""

API_KEY = "sandboxes-test-key"
