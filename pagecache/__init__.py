"""pagecache: a full-page cache for WSGI applications, on memcached, with grace
periods and no dog-pile. See README for configuration."""

from .config import ConfigError
from .middleware import PageCacheMiddleware
from .paste import filter_factory

__all__ = ["PageCacheMiddleware", "filter_factory", "ConfigError", "includeme"]


def includeme(config):  # type: ignore[no-untyped-def]
    """``config.include("pagecache")`` in a Pyramid application: ``request.pagecache``."""
    from .pyramid import includeme as include
    include(config)
__version__ = "0.2.0"
