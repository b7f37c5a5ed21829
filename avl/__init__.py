"""The shared core of the AVL server: settings, domain records, database access and schema."""

__version__ = "0.1.0"
