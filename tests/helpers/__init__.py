"""Helpers the tests import: `from tests.helpers.images import image_bytes`."""
