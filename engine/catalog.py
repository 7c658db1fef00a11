"""What the Engine knows about the library itself: collections, jobs, assets, thumbnails, embedding maps.

`CatalogMixin` is mixed into `engine.engine.Engine` (it uses `self.svc`, the process's Services)."""

from __future__ import annotations


class CatalogMixin:
    svc: object
