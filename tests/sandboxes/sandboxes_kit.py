"""Constants shared by the persistent-sandbox tests and their fixtures (a module of its
own: `conftest` names several modules in this suite, so it cannot be imported by name)."""

TEST_UID = 60361
API_KEY = "sandboxes-test-key"
SERVER_UID = 60362  # the API server's sandboxes, counted apart from the engine tests'
