"""The bad-input corpus (issue 6): files that must never stop a run, generated on demand, never committed.

``python -m tests.data.bad FOLDER`` writes every file into FOLDER; the tests build what they need in a
temporary folder through the same functions (``media.generate``, ``texts.generate``).
"""
