"""What the tests of every tier share: :mod:`tests.helpers.waiting` (the one way to wait)."""
