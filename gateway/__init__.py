"""The daemon: state, flows, scheduling, storage, journal, RPC and operator surfaces."""

__version__ = "0.2.0"
