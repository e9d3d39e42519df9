"""Helpers the test folders share: real servers, the host's guards, the databases."""
