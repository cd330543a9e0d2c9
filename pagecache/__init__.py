"""pagecache: a full-page cache for WSGI applications, on memcached, with grace
periods and no dog-pile. See README for configuration."""

from .config import ConfigError
from .middleware import PageCacheMiddleware
from .paste import filter_factory

__all__ = ["PageCacheMiddleware", "filter_factory", "ConfigError"]
__version__ = "0.1.0"
