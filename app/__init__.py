"""The application on top of the framework: the ffp CLI, the report, the review server, status."""
