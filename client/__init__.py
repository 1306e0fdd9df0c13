"""The ZODB storage adapter of neostore (``neostore.client.NeoStorage``)."""

from neostore.client.storage import NeoStorage

__all__ = ["NeoStorage"]
