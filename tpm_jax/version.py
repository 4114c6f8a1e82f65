"""The library's version (written into each checkpoint's meta)."""
__version__ = '0.1.0'
